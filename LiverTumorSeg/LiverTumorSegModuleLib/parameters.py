"""The module's settings as stored in its parameter node (saved with the scene).

Slicer 5.2+ uses ``parameterNodeWrapper`` (declared in LiverTumorSeg.py with exactly these names
and defaults; a test checks that); older Slicer versions get :class:`ParameterNodeAdapter`, which
stores the same names on a plain ``vtkMRMLScriptedModuleNode``. Both expose the settings as
attributes, so the widget code is the same.
"""

from __future__ import annotations

from typing import Any, Dict

DEVICE_CHOICES = ("auto", "GPU", "CPU")  # as shown in the device combo box
DEVICE_TO_CLI = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}
QUALITY_CHOICES = ("full", "fast")

# name -> default, for the value settings
VALUE_DEFAULTS: Dict[str, Any] = {
    "liverModel": "",  # "" = the library's default model
    "tumorModel": "",
    "device": "auto",
    "quality": "full",
    "tta": False,
    "liverRefine": True,
    "activeContour": True,
    "interslice": True,
    "exportDirectory": "",
}
# name -> MRML class, for the node settings (stored as node references)
NODE_PARAMETERS: Dict[str, str] = {
    "inputVolume": "vtkMRMLScalarVolumeNode",
    "outputSegmentation": "vtkMRMLSegmentationNode",
}


class ParameterNodeAdapter:
    """Attribute access to the settings on a ``vtkMRMLScriptedModuleNode`` (pre-5.2 Slicer)."""

    def __init__(self, node) -> None:
        object.__setattr__(self, "parameterNode", node)

    def __getattr__(self, name: str) -> Any:
        node = object.__getattribute__(self, "parameterNode")
        if name in NODE_PARAMETERS:
            return node.GetNodeReference(name)
        if name not in VALUE_DEFAULTS:
            raise AttributeError(name)
        default = VALUE_DEFAULTS[name]
        stored = node.GetParameter(name)
        if stored == "":  # never set (no setting has "" as a meaningful non-default value)
            return default
        if isinstance(default, bool):
            return stored == "True"
        return stored

    def __setattr__(self, name: str, value: Any) -> None:
        node = self.parameterNode
        if name in NODE_PARAMETERS:
            node.SetNodeReferenceID(name, None if value is None else value.GetID())
        elif name in VALUE_DEFAULTS:
            default = VALUE_DEFAULTS[name]
            if isinstance(default, bool):
                node.SetParameter(name, "True" if value else "False")
            else:
                node.SetParameter(name, str(value))
        else:
            raise AttributeError(f"unknown LiverTumorSeg setting '{name}'")

    def initialize_defaults(self) -> None:
        """Write the defaults of settings the node does not have yet."""
        for name, default in VALUE_DEFAULTS.items():
            if self.parameterNode.GetParameter(name) == "":
                setattr(self, name, default)
