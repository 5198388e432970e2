"""The module's self-test (LiverTumorSegTest) as Slicer 5.6 runs it from Reload and Test, in the
stand-in application (Testing/module/slicer_app_standin.py): Reload and Test reports any exception,
unittest.SkipTest too, as a failure, so a test that cannot run says why and returns."""

from __future__ import annotations

import sys
import types

from slicer_app_standin import with_versions


def test_reload_and_test_without_dependencies_skips_and_says_why(app, monkeypatch):
    with_versions(monkeypatch, missing=("torch", "monai"))
    app.create_module()
    widget = app.create_widget()
    widget.onReloadAndTest()  # as the button does: an exception would become an error dialog
    assert app.dialogs.texts("error") == []
    skipped = [m for m in app.displayed if "skipped" in m]
    assert skipped == ["LiverTumorSeg self-test: test_SegmentRecomputeExport skipped: dependencies not installed: "
                       "torch>=2.1,<3, monai>=1.3,<2"]
    assert "Checking the module and its resources" in app.displayed  # the other test ran


def test_self_test_without_network_and_test_ct_skips_instead_of_failing(app, monkeypatch):
    with_versions(monkeypatch)
    sample_data = types.ModuleType("SampleData")

    def offline(name):
        raise ConnectionError(f"could not download {name}: no network")

    sample_data.downloadSample = offline
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    app.create_module()  # registers its test for Reload and Test
    import slicer

    slicer.selfTests["LiverTumorSeg"](msec=0)  # returns: no exception
    assert any(m.startswith("LiverTumorSeg self-test: test_SegmentRecomputeExport skipped: no test CT")
               for m in app.displayed), app.displayed
