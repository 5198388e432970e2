"""A stand-in for the parts of the 3D Slicer 5.6 application that ``LiverTumorSeg.py`` and its panel
(``LiverTumorSegModuleLib/widget.py``) use, so the Module, Widget, Logic and Test classes run headless (PyPI's slicer-core has MRML but no
application, no Qt widgets and no ``slicer.ScriptedLoadableModule``).

What it plays, as Slicer 5.6 has it:

- ``qt``: ``QTimer`` (driven by the test), ``QIcon``, ``QDir``, ``QTableWidgetItem``, ``Qt`` enums.
- The panel's widgets, built from the module's own ``.ui`` file with PythonQt semantics: Qt
  properties are attributes (``comboBox.currentData``, ``checkBox.checked``, ``comboBox.count``),
  signals have ``connect``; setting a value emits its signal as Qt does (``addItem`` on an empty
  combo box selects item 0 and emits ``currentIndexChanged``; ``clear`` emits it with -1).
- ``slicer.app`` (``aboutToQuit``, ``temporaryPath``, ``processEvents``), ``slicer.mrmlScene`` (a
  real scene), ``slicer.selfTests``, the ``slicer.util`` dialogs and ``pip_install`` (recorded; the
  test sets the answers), and ``slicer.ScriptedLoadableModule`` as in Slicer 5.6 (``runTest``
  instantiates ``<Module>Test`` and calls its ``runTest``; Reload and Test shows any exception as
  an error). ``slicer.parameterNodeWrapper`` is absent, so the settings live on the plain
  parameter node through ``ParameterNodeAdapter`` (the same names and defaults: parameters.py).

Everything is installed with pytest's ``monkeypatch`` and undone after the test. The module's
background runs go through its Logic's ``launcher`` (:meth:`SlicerApp.use_fake_cli` gives it one
that runs Testing/module/fake_livertumorseg.py); its models are listed by the real library, in this
process, unless a test gives the cards.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import sys
import tempfile
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import slicer
import vtk

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO_ROOT / "LiverTumorSeg" / "LiverTumorSeg.py"
UI_FILE = REPO_ROOT / "Resources" / "UI" / "LiverTumorSeg.ui"
FAKE_CLI = Path(__file__).resolve().parent / "fake_livertumorseg.py"


# ----------------------------------------------------------------------------------------------
# Qt


class Signal:
    """A Qt signal as PythonQt exposes it; a slot gets as many arguments as it accepts."""

    def __init__(self) -> None:
        self._slots: List[Callable] = []

    def connect(self, slot: Callable) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Optional[Callable] = None) -> None:
        self._slots = [] if slot is None else [s for s in self._slots if s != slot]

    @property
    def connections(self) -> int:
        return len(self._slots)

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            slot(*args[:_positional_capacity(slot, len(args))])


def _positional_capacity(slot: Callable, available: int) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return available
    return min(available, sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)))


class QTimer:
    """Never fires by itself: the test calls :func:`fire` (or ``timeout.emit()``)."""

    def __init__(self) -> None:
        self.timeout = Signal()
        self.interval = 0
        self.active = False

    def setInterval(self, msec: int) -> None:
        self.interval = msec

    def start(self, msec: Optional[int] = None) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active

    @staticmethod
    def singleShot(msec: int, callback: Callable) -> None:
        callback()


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self.text = text

    def setTextAlignment(self, alignment) -> None:
        pass


def make_qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.QIcon = lambda path="": ("QIcon", path)
    qt.QDir = types.SimpleNamespace(homePath=lambda: str(Path.home()))
    qt.QTableWidgetItem = QTableWidgetItem
    qt.Qt = types.SimpleNamespace(AlignRight=0x2, AlignVCenter=0x80, ToolTipRole=3, DisplayRole=0, UserRole=0x100)
    return qt


# ----------------------------------------------------------------------------------------------
# Widgets of the .ui file


class Widget:
    def __init__(self, name: str) -> None:
        self.objectName = name
        self.enabled = True
        self.visible = True
        self.toolTip = ""

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene


class Label(Widget):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.text = ""


class PushButton(Label):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.clicked = Signal()

    def click(self) -> None:
        if self.enabled:
            self.clicked.emit(False)


class CheckBox(Label):
    def __init__(self, name: str) -> None:
        self.toggled = Signal()
        self._checked = False
        super().__init__(name)

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)


class ComboBox(Widget):
    """QComboBox: items of (text, data); ``currentText``/``currentData``/``count`` are properties."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.items: List[List[Any]] = []  # [text, data, tooltip]
        self._index = -1
        self.currentIndexChanged = Signal()

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def currentIndex(self) -> int:
        return self._index

    @property
    def currentText(self) -> str:
        return self.items[self._index][0] if self._index >= 0 else ""

    @property
    def currentData(self):
        return self.items[self._index][1] if self._index >= 0 else None

    def addItem(self, text: str, data=None) -> None:
        self.items.append([text, data, ""])
        if self._index < 0:
            self._set_index(0)

    def clear(self) -> None:
        self.items = []
        self._set_index(-1)

    def itemText(self, index: int) -> str:
        return self.items[index][0] if 0 <= index < len(self.items) else ""

    def itemData(self, index: int, role=None):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def setItemData(self, index: int, value, role=None) -> None:
        if 0 <= index < len(self.items):
            self.items[index][2] = value

    def findData(self, data) -> int:
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    def findText(self, text: str) -> int:
        return next((i for i, item in enumerate(self.items) if item[0] == text), -1)

    def setCurrentIndex(self, index: int) -> None:
        if -1 <= index < len(self.items):
            self._set_index(index)

    def _set_index(self, index: int) -> None:
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)

    def choose(self, text: str) -> None:
        """What the user does: pick the item shown as ``text``."""
        index = self.findText(text)
        assert index >= 0, f"{self.objectName} has no item {text!r}: {[i[0] for i in self.items]}"
        self.setCurrentIndex(index)


class NodeComboBox(Widget):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._node = None
        self.currentNodeChanged = Signal()

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class DirectoryButton(Widget):
    def __init__(self, name: str) -> None:
        self.directoryChanged = Signal()
        self._directory = ""
        super().__init__(name)

    @property
    def directory(self) -> str:
        return self._directory

    @directory.setter
    def directory(self, value: str) -> None:
        if value != self._directory:
            self._directory = value
            self.directoryChanged.emit(value)


class ProgressBar(Widget):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._value = 0

    def setValue(self, value: int) -> None:
        self._value = int(value)

    def value(self) -> int:
        return self._value


class PlainTextEdit(Widget):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.lines: List[str] = []

    def appendPlainText(self, text: str) -> None:
        self.lines.append(text)

    def clear(self) -> None:
        self.lines = []

    def toPlainText(self) -> str:
        return "\n".join(self.lines)


class TableWidget(Widget):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.cells: Dict[tuple, Any] = {}
        self.rows = 0
        self.cellClicked = Signal()
        self._header = types.SimpleNamespace(setVisible=lambda visible: None)

    def setColumnCount(self, count: int) -> None:
        self.columns = count

    def setHorizontalHeaderLabels(self, labels) -> None:
        self.headers = list(labels)

    def verticalHeader(self):
        return self._header

    def setRowCount(self, rows: int) -> None:
        self.rows = rows

    def setItem(self, row: int, column: int, item) -> None:
        self.cells[(row, column)] = item

    def resizeColumnsToContents(self) -> None:
        pass


class CollapsibleButton(Label):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.collapsed = False


WIDGET_CLASSES = {"QLabel": Label, "QPushButton": PushButton, "QCheckBox": CheckBox, "QComboBox": ComboBox,
                  "qMRMLNodeComboBox": NodeComboBox, "ctkDirectoryButton": DirectoryButton,
                  "QProgressBar": ProgressBar, "QPlainTextEdit": PlainTextEdit, "QTableWidget": TableWidget,
                  "ctkCollapsibleButton": CollapsibleButton, "qMRMLWidget": Widget}


def load_ui(path) -> Widget:
    """The widget tree of a .ui file: the root, with ``children`` by object name; combo box items
    and check box states as the file sets them."""
    root_element = ElementTree.parse(str(path)).getroot()
    root = None
    children: Dict[str, Widget] = {}
    for element in root_element.iter("widget"):
        cls = WIDGET_CLASSES.get(element.get("class"))
        assert cls is not None, f"the stand-in has no widget class {element.get('class')}: add it"
        widget = cls(element.get("name"))
        if isinstance(widget, ComboBox):
            for item in element.findall("item"):
                widget.addItem(item.find("property/string").text)
        for prop in element.findall("property"):
            if prop.get("name") == "checked" and isinstance(widget, CheckBox):
                widget.checked = prop.find("bool").text == "true"
            if prop.get("name") == "text" and hasattr(widget, "text") and prop.find("string") is not None:
                widget.text = prop.find("string").text or ""
        if root is None:
            root = widget
        else:
            children[widget.objectName] = widget
    root.children = children
    return root


# ----------------------------------------------------------------------------------------------
# slicer.app, slicer.util, slicer.ScriptedLoadableModule


class App:
    """``slicer.app`` as far as the module uses it."""

    def __init__(self, temporary_path: Path) -> None:
        self.aboutToQuit = Signal()
        self.temporaryPath = str(temporary_path)

    def processEvents(self) -> None:
        pass

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=True)

    def quit(self) -> None:
        self.aboutToQuit.emit()


class Dialogs:
    """``slicer.util`` dialogs and pip_install: what was shown, and the answers to give."""

    def __init__(self) -> None:
        self.shown: List[tuple] = []  # (kind, text)
        self.answers: Dict[str, bool] = {"confirmOkCancel": True, "confirmYesNo": True}
        self.pip_installs: List[list] = []
        self.on_pip_install: Optional[Callable[[list], None]] = None

    def texts(self, kind: str) -> List[str]:
        return [text for k, text in self.shown if k == kind]

    def install(self, monkeypatch) -> None:
        util = slicer.util

        def show(kind):
            def display(text, windowTitle=None, **kwargs):
                self.shown.append((kind, text))
            return display

        def confirm(kind):
            def display(text, windowTitle=None, **kwargs):
                self.shown.append((kind, text))
                return self.answers[kind]
            return display

        def pip_install(requirements):
            requirements = [requirements] if isinstance(requirements, str) else list(requirements)
            self.pip_installs.append(requirements)
            if self.on_pip_install is not None:
                self.on_pip_install(requirements)

        monkeypatch.setattr(util, "errorDisplay", show("error"))
        monkeypatch.setattr(util, "warningDisplay", show("warning"))
        monkeypatch.setattr(util, "infoDisplay", show("info"))
        monkeypatch.setattr(util, "confirmOkCancelDisplay", confirm("confirmOkCancel"))
        monkeypatch.setattr(util, "confirmYesNoDisplay", confirm("confirmYesNo"))
        monkeypatch.setattr(util, "pip_install", pip_install)
        monkeypatch.setattr(util, "WaitCursor", contextlib.nullcontext)
        monkeypatch.setattr(util, "setSliceViewerLayers", lambda **kwargs: None)
        monkeypatch.setattr(util, "selectModule", lambda name: self.shown.append(("selectModule", name)))
        monkeypatch.setattr(util, "loadUI", load_ui)
        monkeypatch.setattr(util, "childWidgetVariables", lambda root: types.SimpleNamespace(**root.children))


def make_scripted_loadable_module(displayed: List[str]) -> types.ModuleType:
    """``slicer.ScriptedLoadableModule`` of Slicer 5.6 (Base/Python/slicer/ScriptedLoadableModule.py),
    reduced to what runs without a GUI."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""
            if not hasattr(slicer, "selfTests"):
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = self.runTest

        def runTest(self, msec=100, **kwargs):
            module_ = importlib.import_module(self.__module__)
            testCase = getattr(module_, self.moduleName + "Test")()
            testCase.messageDelay = msec
            testCase.runTest(**kwargs)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Widget"):
                self.moduleName = self.moduleName[:-6]
            self.developerMode = False
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

        def setup(self) -> None:
            pass

        def cleanup(self) -> None:
            pass

        def onReloadAndTest(self, **kwargs) -> None:
            """As Slicer 5.6: any exception of the test (unittest.SkipTest too) is shown as an error."""
            try:
                slicer.selfTests[self.moduleName](msec=0, **kwargs)
            except Exception as exc:  # noqa: BLE001 - what Slicer does
                slicer.util.errorDisplay("Reload and Test failed.\n\n" + str(exc))

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                return node
            return slicer.mrmlScene.AddNode(self.createParameterNode())

        def createParameterNode(self):
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, requestedDelay=None, msec=None) -> None:
            displayed.append(message)
            logging.info(message)

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return module


# ----------------------------------------------------------------------------------------------
# The application


class SlicerApp:
    """The stand-in application with ``LiverTumorSeg.py`` loaded into it (see the module docstring).

    ``module`` is the loaded LiverTumorSeg.py; ``dialogs`` records dialogs and pip installs;
    ``displayed`` the self-test's delayDisplay messages; ``scene`` is ``slicer.mrmlScene``.
    """

    def __init__(self, monkeypatch, tmp_path: Path) -> None:
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        self.app = App(tmp_path)
        self.scene = slicer.vtkMRMLScene()
        self.dialogs = Dialogs()
        self.displayed: List[str] = []
        self.widgets: List[Any] = []
        # Each run's temporary folder, and the search for stale ones, stay inside this test's folder.
        temp_root = tmp_path / "system_temp"
        temp_root.mkdir(exist_ok=True)
        monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
        self.temp_root = temp_root

        monkeypatch.setattr(slicer, "app", self.app, raising=False)
        monkeypatch.setattr(slicer, "mrmlScene", self.scene, raising=False)
        monkeypatch.setattr(slicer, "selfTests", {}, raising=False)
        self.dialogs.install(monkeypatch)
        standin_slm = make_scripted_loadable_module(self.displayed)
        monkeypatch.setitem(sys.modules, "qt", make_qt_module())
        monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", standin_slm)
        monkeypatch.setattr(slicer, "ScriptedLoadableModule", standin_slm, raising=False)
        monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", None)  # import fails: the adapter is used
        monkeypatch.setitem(sys.modules, "SampleData", None)  # no SampleData unless a test provides one
        # The panel is imported afresh with this test's stand-ins (it imports qt and slicer.ScriptedLoadableModule).
        monkeypatch.delitem(sys.modules, "LiverTumorSegModuleLib.widget", raising=False)
        # Models: the embedded ones and an empty cache of this test, as a fresh installation has.
        monkeypatch.delenv("LIVERTUMORSEG_MODELS", raising=False)
        monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(tmp_path / "model_cache"))

        spec = importlib.util.spec_from_file_location("LiverTumorSeg", MODULE_FILE)
        self.module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "LiverTumorSeg", self.module)
        spec.loader.exec_module(self.module)

    # -- the module's pieces, as Slicer creates them ----------------------------------------
    def create_module(self):
        """What Slicer does at startup for every scripted module."""
        parent = types.SimpleNamespace(path=str(MODULE_FILE))
        return self.module.LiverTumorSeg(parent)

    def create_widget(self, cards: Optional[List[Dict[str, Any]]] = None):
        """The panel, set up; ``cards`` replaces the library's model list (see :meth:`list_models`)."""
        if cards is not None:
            self.list_models(cards)
        widget = self.module.LiverTumorSegWidget(types.SimpleNamespace(isEntered=True))
        widget.setup()
        self.widgets.append(widget)
        return widget

    def list_models(self, cards: Optional[List[Dict[str, Any]]] = None, error: str = "") -> None:
        """From now on the Logic lists ``cards`` as the library's models, or fails with ``error``."""
        def listModels():
            if error:
                raise RuntimeError(error)
            return list(cards or [])

        self.monkeypatch.setattr(self.module.LiverTumorSegLogic, "listModels", staticmethod(listModels))

    def close(self) -> None:
        """Unload the module, as Slicer does at exit: every widget's cleanup (observers removed,
        runs stopped), then any run still going."""
        from LiverTumorSegModuleLib import runs

        for widget in self.widgets:
            widget.cleanup()
        runs.stop_all_runs()

    def use_fake_cli(self, mode: str = "ok") -> None:
        """Segmentations run the fake command line (Testing/module/fake_livertumorseg.py)."""
        from LiverTumorSegModuleLib.process import Launcher

        self.monkeypatch.setattr(self.module.LiverTumorSegLogic, "launcher",
                                 Launcher(prefix=[sys.executable, str(FAKE_CLI)]))
        self.monkeypatch.setenv("FAKE_CLI_MODE", mode)

    def add_ct_volume(self, name: str = "CT", shape_kji=(10, 16, 20)):
        from mrml_helpers import add_ct_volume

        spacing = vtk.vtkMatrix4x4()
        for axis, mm in enumerate((1.5, 1.5, 3.0)):
            spacing.SetElement(axis, axis, mm)
        node, _ = add_ct_volume(self.scene, name, shape_kji, matrix=spacing)
        return node


def with_versions(monkeypatch, missing=(), versions=None) -> Dict[str, str]:
    """The Python packages as a test wants them: ``missing`` import names are not importable,
    ``versions`` (distribution -> version; the returned dict, which the test may change) are the
    installed versions; every other package is present, its version unknown."""
    from LiverTumorSegModuleLib import dependencies

    versions = dict(versions or {})
    monkeypatch.setattr(dependencies, "is_importable", lambda name: name not in missing)
    monkeypatch.setattr(dependencies, "installed_version",
                        lambda distribution, import_name=None: versions.get(distribution))
    return versions


def fire(timer: QTimer, times: int = 1) -> None:
    """Let a timer of the panel fire (only while it is active, as Qt would)."""
    for _ in range(times):
        if timer.active:
            timer.timeout.emit()


def process_alive(pid: int) -> bool:
    """False once the process is gone or a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, step: Callable[[], Any] = None) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if condition():
            return True
        time.sleep(0.05)
    return condition()
