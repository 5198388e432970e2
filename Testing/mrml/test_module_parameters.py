"""The settings on a real parameter node (the pre-5.2 path; Slicer 5.2+ uses parameterNodeWrapper
with the same names): defaults, typed values, node references, and a scene save/reload."""

from __future__ import annotations

import slicer

from LiverTumorSegModuleLib import parameters
from LiverTumorSegModuleLib.parameters import ParameterNodeAdapter


def test_defaults_and_typed_values_survive_a_scene_reload(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "LiverTumorSeg")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    settings = ParameterNodeAdapter(node)
    for name, default in parameters.VALUE_DEFAULTS.items():
        assert getattr(settings, name) == default
    assert settings.inputVolume is None and settings.outputSegmentation is None

    settings.initialize_defaults()
    settings.inputVolume = volume
    settings.outputSegmentation = segmentation
    settings.device = "GPU"
    settings.quality = "fast"
    settings.tta = False
    settings.activeContour = False
    settings.liverRefine = False
    settings.tumorModel = "tumor-x"

    path = tmp_path / "scene.mrml"
    scene.SetURL(str(path))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(path))
    assert reloaded.Import()
    again = ParameterNodeAdapter(reloaded.GetFirstNodeByName("LiverTumorSeg"))
    assert again.inputVolume.GetName() == "CT" and again.outputSegmentation.GetName() == "seg"
    assert (again.device, again.quality, again.tta, again.liverRefine, again.activeContour, again.interslice) == \
        ("GPU", "fast", False, False, False, True)
    assert again.tumorModel == "tumor-x" and again.liverModel == ""

    settings.outputSegmentation = None
    assert settings.outputSegmentation is None


def test_unknown_settings_are_refused():
    node = slicer.vtkMRMLScriptedModuleNode()
    settings = ParameterNodeAdapter(node)
    try:
        settings.colour = "red"
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown setting was accepted")
