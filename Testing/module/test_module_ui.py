"""The Slicer module without Slicer: the .ui file loads with Qt offscreen and has every widget
(and widget member) the module code uses, the run's settings' widgets among them; the module imports
nothing heavy and stays a thin shell; its parameter node is made from the library's settings schema;
its dependency list agrees with pyproject.toml."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from LiverTumorSegModuleLib import dependencies, parameters, presentation, mrml

REPO_ROOT = Path(__file__).resolve().parents[2]
UI_FILE = REPO_ROOT / "Resources" / "UI" / "LiverTumorSeg.ui"
MODULE_FILE = REPO_ROOT / "LiverTumorSeg" / "LiverTumorSeg.py"
WIDGET_FILE = REPO_ROOT / "LiverTumorSeg" / "LiverTumorSegModuleLib" / "widget.py"
ICON_FILE = REPO_ROOT / "Resources" / "Icons" / "LiverTumorSeg.png"

# Members of Slicer/CTK widgets the code may use (Qt properties, slots and signals of those classes).
CUSTOM_WIDGET_MEMBERS = {
    "qMRMLNodeComboBox": {"setMRMLScene", "currentNode", "setCurrentNode", "currentNodeChanged", "enabled",
                          "toolTip", "nodeTypes"},
    "ctkDirectoryButton": {"directory", "directoryChanged", "enabled", "toolTip"},
    "ctkCollapsibleButton": {"collapsed", "text", "enabled"},
}


def ui_widgets() -> dict:
    """name -> class of every widget in the .ui file."""
    root = ElementTree.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


# What the panel does with the widgets of the run's settings (widget.py: setupSettingWidgets,
# settingWidget and the loops over parameters.MODULE_SETTINGS).
SETTING_WIDGET_MEMBERS = {
    "QCheckBox": {"text", "toolTip", "toggled", "checked", "enabled"},
    "QComboBox": {"toolTip", "addItem", "currentIndexChanged", "currentText", "currentData", "enabled"},
    "QLabel": {"text"},
}


def setting_widgets() -> dict:
    """name -> class the panel expects for the widgets of the run's settings."""
    widgets = {}
    for setting in parameters.MODULE_SETTINGS:
        name = parameters.widget_name(setting)
        widgets[name] = "QComboBox" if name.endswith("ComboBox") else "QCheckBox"
        if widgets[name] == "QComboBox":
            widgets[setting.parameter + "Label"] = "QLabel"
    return widgets


def ui_member_uses() -> dict:
    """name -> set of members the module code (the shell and its panel) uses on ``self.ui.<name>``,
    and on the widgets of the run's settings."""
    source = MODULE_FILE.read_text(encoding="utf-8") + WIDGET_FILE.read_text(encoding="utf-8")
    uses: dict = {}
    for name, member in re.findall(r"self\.ui\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?", source):
        uses.setdefault(name, set())
        if member:
            uses[name].add(member)
    for name, cls in setting_widgets().items():
        uses.setdefault(name, set()).update(SETTING_WIDGET_MEMBERS[cls])
    return uses


def test_every_widget_the_code_uses_is_in_the_ui_file():
    widgets = ui_widgets()
    used = ui_member_uses()
    assert len(used) >= 20
    missing = sorted(set(used) - set(widgets))
    assert not missing, f"the module uses widgets the .ui does not have: {missing}"


def test_ui_uses_slicer_widget_classes_with_the_right_settings():
    root = ElementTree.parse(UI_FILE).getroot()
    widgets = ui_widgets()
    assert widgets["LiverTumorSeg"] == "qMRMLWidget"
    assert widgets["inputVolumeSelector"] == widgets["outputSegmentationSelector"] == "qMRMLNodeComboBox"

    def prop(widget_name, prop_name):
        widget = next(w for w in root.iter("widget") if w.get("name") == widget_name)
        element = next(p for p in widget.findall("property") if p.get("name") == prop_name)
        return element[0]

    assert [s.text for s in prop("inputVolumeSelector", "nodeTypes")] == ["vtkMRMLScalarVolumeNode"]
    assert [s.text for s in prop("outputSegmentationSelector", "nodeTypes")] == ["vtkMRMLSegmentationNode"]
    assert prop("outputSegmentationSelector", "noneEnabled").text == "true"
    assert prop("outputSegmentationSelector", "noneDisplay").text == "Create new segmentation"
    assert prop("nonClinicalBadgeLabel", "text").text == "NON-CLINICAL DEMO MODEL"
    assert "#c62828" in prop("nonClinicalBadgeLabel", "styleSheet").text  # red
    declared = {c.find("class").text for c in root.iter("customwidget")}
    assert {cls for cls in widgets.values() if cls[0] in "qc" and not cls.startswith("Q")} <= declared


def test_the_settings_widgets_are_in_the_ui_file_and_hold_no_text_of_their_own():
    """Their labels, tooltips and items come from the library's settings schema, so the .ui file has
    the widgets only (nothing there to disagree with the schema)."""
    root = ElementTree.parse(UI_FILE).getroot()
    widgets = ui_widgets()
    expected = setting_widgets()
    assert {name: widgets.get(name) for name in expected} == expected
    for element in root.iter("widget"):
        if element.get("name") in expected:
            assert not list(element), f"{element.get('name')} sets {[p.get('name') for p in element]} in the .ui"


@pytest.fixture(scope="module")
def qt_app():
    pytest.importorskip("PySide6", reason="PySide6-Essentials is needed to load the .ui with Qt")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def test_ui_file_loads_with_qt_offscreen_and_members_exist(qt_app):
    from PySide6.QtCore import QFile, QMetaObject
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget
    import PySide6.QtWidgets as QtWidgets

    loader = QUiLoader()
    handle = QFile(str(UI_FILE))
    assert handle.open(QFile.ReadOnly)
    root = loader.load(handle)
    handle.close()
    assert root is not None, loader.errorString()
    assert loader.errorString() == ""

    classes = ui_widgets()
    for name, members in ui_member_uses().items():
        widget = root.findChild(QWidget, name)
        assert widget is not None, f"{name} is not in the loaded widget tree"
        ui_class = classes[name]
        for member in members:
            if ui_class in CUSTOM_WIDGET_MEMBERS:
                assert member in CUSTOM_WIDGET_MEMBERS[ui_class], f"{name}.{member} ({ui_class}) is not known"
                continue
            qt_class = getattr(QtWidgets, ui_class)
            meta: QMetaObject = qt_class.staticMetaObject
            assert hasattr(qt_class, member) or meta.indexOfProperty(member) >= 0, \
                f"{name}.{member}: {ui_class} has no such method, signal or property"


def test_module_source_compiles_and_imports_nothing_heavy_at_load():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_level.add(node.module.split(".")[0])
    allowed = {"importlib", "json", "logging", "os", "sys", "time", "pathlib", "typing", "qt", "slicer", "vtk",
               "LiverTumorSegModuleLib"}
    assert top_level <= allowed, f"unexpected module-level imports: {sorted(top_level - allowed)}"

    script = ("import sys; sys.path.insert(0, %r)\n"
              "import LiverTumorSegModuleLib.mrml, LiverTumorSegModuleLib.task, LiverTumorSegModuleLib.process\n"
              "import LiverTumorSegModuleLib.runs, LiverTumorSegModuleLib.export\n"
              "import LiverTumorSegModuleLib.dependencies, LiverTumorSegModuleLib.parameters\n"
              "import LiverTumorSegModuleLib.presentation, LiverTumorSegModuleLib.lesion\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
              "('torch', 'monai', 'scipy', 'skimage', 'safetensors', 'slicerio'))\n"
              "print(heavy)") % str(REPO_ROOT / "LiverTumorSeg")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_parameter_node_wrapper_class_is_made_from_the_schema():
    """What Slicer 5.2+'s parameterNodeWrapper reads (typing.get_type_hints and class attributes):
    the node settings typed by MRML class, every value setting with its type and stored default."""
    import typing
    import types

    mrml = types.SimpleNamespace(vtkMRMLScalarVolumeNode=type("Volume", (), {}),
                                 vtkMRMLSegmentationNode=type("Segmentation", (), {}))
    cls = parameters.wrapper_class(mrml)
    hints = typing.get_type_hints(cls, include_extras=True)
    assert hints == {"inputVolume": mrml.vtkMRMLScalarVolumeNode, "outputSegmentation": mrml.vtkMRMLSegmentationNode,
                     "liverModel": str, "tumorModel": str, "device": str, "quality": str, "tta": bool,
                     "liverRefine": bool, "activeContour": bool, "interslice": bool, "exportDirectory": str}
    defaults = {name: getattr(cls, name) for name in hints if hasattr(cls, name)}
    assert defaults == {"liverModel": "", "tumorModel": "", "device": "auto", "quality": "full", "tta": True,
                        "liverRefine": True, "activeContour": True, "interslice": True, "exportDirectory": ""}
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    assert "parameterNodeWrapper(parameters.wrapper_class(slicer))" in ast.unparse(tree)


def test_stored_settings_become_the_options_of_a_run():
    """The parameter node stores what the panel shows; a run gets the library's values."""
    import types

    stored = dict(parameters.VALUE_DEFAULTS)
    assert parameters.segment_options(types.SimpleNamespace(**stored)).to_args() == []
    stored.update(device="GPU", quality="fast", tta=False, liverRefine=False, activeContour=False, interslice=False,
                  liverModel="my-liver", tumorModel="")
    options = parameters.segment_options(types.SimpleNamespace(**stored))
    assert (options.device, options.fast, options.refine_liver, options.tumor_model) == \
        ("cuda", True, False, "tumor-demo-ensemble")
    assert options.to_args() == ["--device", "cuda", "--fast", "--liver-model", "my-liver", "--no-tta",
                                 "--no-liver-refine", "--no-active-contour", "--no-interslice"]
    stored.update(device="a device from a future version")  # a saved scene's unknown value: the default
    assert parameters.run_setting(types.SimpleNamespace(**stored), "device") == "auto"


def test_the_module_file_is_a_thin_shell():
    """Module, Logic facade and Test; the panel, the process and the MRML code live in LiverTumorSegModuleLib."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"LiverTumorSeg", "LiverTumorSegWidget", "LiverTumorSegLogic", "LiverTumorSegTest"} <= set(classes)
    widget_methods = [n.name for n in classes["LiverTumorSegWidget"].body if isinstance(n, ast.FunctionDef)]
    assert widget_methods == ["createLogic"]
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) <= 400


def test_pyproject_takes_its_dependencies_from_the_library_requirements_file():
    """One list: the wheel's dependencies and the module's are LiverTumorSegLib/requirements.txt."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "dependencies" not in pyproject["project"] and "dependencies" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["LiverTumorSegLib/requirements.txt"]}
    assert "requirements.txt" in pyproject["tool"]["setuptools"]["package-data"]["LiverTumorSegLib"]
    listed = dict(dependencies.library_requirements(REPO_ROOT / "LiverTumorSegLib"))
    assert listed["torch"] == dependencies.TORCH_REQUIREMENT
    assert {name: req for name, req in dependencies.REQUIREMENTS} == {k: v for k, v in listed.items() if k != "torch"}


def test_the_installed_distribution_declares_the_requirements_file():
    from importlib import metadata

    requirements = pytest.importorskip("packaging.requirements")
    try:
        declared = metadata.requires("LiverTumorSegLib") or []
    except metadata.PackageNotFoundError:
        pytest.skip("LiverTumorSegLib is not installed as a distribution here")
    as_set = lambda reqs: {(r.name.lower(), str(r.specifier)) for r in map(requirements.Requirement, reqs)}  # noqa: E731
    base = [req for req in declared if "extra ==" not in req]
    assert as_set(base) == as_set(req for _, req in dependencies.library_requirements(REPO_ROOT / "LiverTumorSegLib"))


def test_the_requirements_file_is_read_with_import_names_and_without_comments(tmp_path):
    (tmp_path / "requirements.txt").write_text("# a comment\n\nnumpy>=1.24\nscikit-image>=0.21\n  torch>=2.1,<3 \n")
    assert dependencies.library_requirements(tmp_path) == (
        ("numpy", "numpy>=1.24"), ("skimage", "scikit-image>=0.21"), ("torch", "torch>=2.1,<3"))


def test_missing_requirements_uses_import_names():
    present = {"numpy", "scipy", "SimpleITK", "skimage", "safetensors", "slicerio", "tqdm"}
    assert dependencies.missing_requirements(lambda name: name in present) == ["monai>=1.3,<2"]
    assert dependencies.torch_missing(lambda name: False)
    assert not dependencies.missing_requirements(lambda name: True)


def test_results_display_rows_and_card_summary():
    rows = mrml.measurement_rows({
        "liver_volume_ml": 1500.0, "tumor_volume_ml": 30.0, "tlvr": 0.02,
        "lesions": [{"id": 1, "volume_ml": 30.0, "longest_axial_diameter_mm": 41.26,
                     "centroid_ras_mm": [1.0, 2.0, 3.0], "mean_hu": 42.4, "voxel_count": 100}]})
    cells = presentation.results_display_rows(rows)
    assert cells[0] == ["Liver (tumor included)", "1500.00", "", "", ""]
    assert cells[1] == ["Liver tumor (all lesions)", "30.00", "2.00", "", ""]
    assert cells[2] == ["Lesion 1", "30.00", "2.00", "41.3", "42"]
    assert len(presentation.RESULT_HEADERS) == len(cells[0])

    card = {"name": "tumor-demo <x>", "version": "1", "task": "tumor", "non_clinical": True,
            "description": "demo", "trained_on": "synthetic tumors", "metrics": {"dice": 0.71234, "hd95": {"mean": 5.5}},
            "members": [{"model": "a", "weight": 0.6}, {"model": "b", "weight": 0.4}]}
    text = presentation.card_summary_html(card)
    assert "tumor-demo &lt;x&gt;" in text and "dice 0.712" in text and "hd95 5.500" in text
    assert "a ×0.6, b ×0.4" in text and "Not for clinical use" in text
    assert "Not for clinical use" not in presentation.card_summary_html(dict(card, non_clinical=False))


def test_icon_is_a_128_pixel_png():
    from skimage import io

    image = io.imread(ICON_FILE)
    assert image.shape[:2] == (128, 128)
    assert image[..., 3].max() == 255 and image[..., 3].min() == 0  # shape on a transparent background


def test_module_texts_say_not_for_clinical_use_and_name_the_methods():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert 'self.parent.title = "Liver Tumor Segmentation"' in source
    assert 'self.parent.categories = ["Segmentation"]' in source
    assert "Not for clinical use" in source
    for method in ("balanced Dice loss", "greedy parameter averaging", "inter-slice", "SegResNetVAE",
                   "label smoothing", "active-contour", "V-Net", "generalized Dice + focal loss",
                   "weighted ensembles", "test-time-augmentation", "CT and MR"):
        assert method in source, method
