"""The module's settings, made from the library's settings schema (``LiverTumorSegLib.settings_schema``):
the parameter node (saved with the scene), the panel's widgets for them, and the ``SegmentOptions``
a run gets.

A setting of the schema with a ``parameter`` is in the panel and the parameter node under that
name, stored as the panel shows it: a combo box's text (``"GPU"``), a model's name (``""`` for the
library's default model), a check box's state. Its widget in the .ui file is ``<parameter>ComboBox``
or ``<parameter>CheckBox``, with a ``<parameter>Label`` beside a combo box.

Slicer 5.2+ wraps the node with ``parameterNodeWrapper`` (the class :func:`wrapper_class` makes);
older Slicer versions get :class:`ParameterNodeAdapter`, which stores the same names on a plain
``vtkMRMLScriptedModuleNode``. Both expose the settings as attributes, so the widget code is the same.
"""

from __future__ import annotations

from typing import Any, Dict

from LiverTumorSegLib.settings_schema import MODULE_SETTINGS, Setting, setting  # on sys.path: see __init__.py

from .process import SegmentOptions

MODULE_ONLY_DEFAULTS: Dict[str, Any] = {"exportDirectory": ""}  # settings of the panel, not of a run
# name -> MRML class, for the node settings (stored as node references)
NODE_PARAMETERS: Dict[str, str] = {
    "inputVolume": "vtkMRMLScalarVolumeNode",
    "outputSegmentation": "vtkMRMLSegmentationNode",
}


def stored_default(s: Setting) -> Any:
    """A setting's default as the parameter node stores it."""
    if s.shown:
        return next(text for text, value in s.shown if value == s.default)
    return "" if s.kind is str else s.default  # a model: "" is the library's default model


def run_value(s: Setting, stored: Any) -> Any:
    """The schema's value of a setting stored as ``stored`` (an unknown combo text: the default)."""
    if s.shown:
        return next((value for text, value in s.shown if text == stored), s.default)
    if s.kind is str:
        return stored or None  # None: the library's default
    return stored


def is_check_box(s: Setting) -> bool:
    """Whether the panel shows a setting as a check box (else as a combo box)."""
    return s.kind is bool and not s.shown


def widget_name(s: Setting) -> str:
    """The .ui widget that shows a setting."""
    return s.parameter + ("CheckBox" if is_check_box(s) else "ComboBox")


# name -> default, for the value settings
VALUE_DEFAULTS: Dict[str, Any] = {s.parameter: stored_default(s) for s in MODULE_SETTINGS}
VALUE_DEFAULTS.update(MODULE_ONLY_DEFAULTS)


def segment_options(p) -> SegmentOptions:
    """The run's options from the settings ``p`` (a parameter node wrapper or adapter)."""
    return SegmentOptions(**{s.name: run_value(s, getattr(p, s.parameter)) for s in MODULE_SETTINGS})


def run_setting(p, name: str) -> Any:
    """One setting of ``p`` as the library names its values (the device: auto, cpu or cuda)."""
    s = setting(name)
    return run_value(s, getattr(p, s.parameter))


def wrapper_class(mrml) -> type:
    """The class ``parameterNodeWrapper`` turns into the module's parameter node: the node settings
    typed by their MRML class (from ``mrml``, the ``slicer`` module), the value settings by their
    default's type, with those defaults."""
    annotations: Dict[str, Any] = {name: getattr(mrml, cls) for name, cls in NODE_PARAMETERS.items()}
    annotations.update({name: type(default) for name, default in VALUE_DEFAULTS.items()})
    return type("LiverTumorSegParameterNode", (), dict(
        VALUE_DEFAULTS, __annotations__=annotations, __module__=__name__,
        __doc__="The module's settings, saved with the scene (parameters.py)."))


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
