"""The Python packages LiverTumorSegLib needs in Slicer's Python: which are missing, which have a
version outside what ``pyproject.toml`` declares, and which each action of the module needs.

The list is LiverTumorSegLib's ``requirements.txt``, from which ``pyproject.toml`` takes its
``[project] dependencies`` too, read from the library packaged beside the module. NumPy, SciPy
and SimpleITK come with Slicer; PyTorch is installed through the PyTorch extension when it is
there, because the right wheel depends on the GPU and driver.

Versions are read from the installed distributions' metadata (no package is imported) and
compared with ``packaging`` when Slicer's Python has it, else with a small comparison of release
numbers. A package whose version cannot be read counts as satisfying its requirement: it is never
reinstalled over (e.g. a SimpleITK that Slicer built itself).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

# Distributions whose import name differs from their name (the others import as they are named).
IMPORT_NAMES = {"scikit-image": "skimage"}
LIBRARY_REQUIREMENTS_FILE = "requirements.txt"  # in the LiverTumorSegLib package, read by pyproject.toml too


def library_requirements(package_dir: Optional[Path] = None) -> Tuple[Tuple[str, str], ...]:
    """(import name, pip requirement) of every line of LiverTumorSegLib's ``requirements.txt``
    (the list pyproject.toml declares), read from ``package_dir`` or where the library is
    installed beside the module, without importing it."""
    if package_dir is None:
        spec = importlib.util.find_spec("LiverTumorSegLib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("LiverTumorSegLib is not installed beside the module; reinstall the extension")
        package_dir = Path(list(spec.submodule_search_locations)[0])
    lines = (Path(package_dir) / LIBRARY_REQUIREMENTS_FILE).read_text(encoding="utf-8").splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    out = []
    for requirement in requirements:
        distribution = re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]
        out.append((IMPORT_NAMES.get(distribution, distribution), requirement))
    return tuple(out)


_ALL = library_requirements()
TORCH_REQUIREMENT = next(req for name, req in _ALL if name == "torch")
REQUIREMENTS: Tuple[Tuple[str, str], ...] = tuple((name, req) for name, req in _ALL if name != "torch")  # PyTorch apart

# What each action of the module imports in Slicer's own Python (None: everything, PyTorch
# included). Segment runs the whole library in a background process; Recompute measurements runs
# LiverTumorSegLib.measure (NumPy, SciPy, SimpleITK) in Slicer, Export also the library's writers
# (slicerio for the .seg.nrrd); the lesion edit runs LiverTumorSegLib.edit in Slicer (its active
# contour needs scikit-image; PyTorch and MONAI only for the tumor model, without them lesions are
# grown from the CT alone). A test checks these lists by importing what those actions import.
SEGMENT, MEASURE, EXPORT, LESION = "segment", "measure", "export", "lesion"
ACTION_IMPORTS: Dict[str, Optional[Tuple[str, ...]]] = {
    SEGMENT: None,
    MEASURE: ("numpy", "scipy", "SimpleITK"),
    EXPORT: ("numpy", "scipy", "SimpleITK", "slicerio"),
    LESION: ("numpy", "scipy", "SimpleITK", "skimage"),
}

ImportableCheck = Callable[[str], bool]  # import name -> importable?
VersionReader = Callable[[str, str], Optional[str]]  # (distribution, import name) -> version or None


@dataclass(frozen=True)
class Problem:
    """A requirement that is not met: the package is missing (``installed`` None) or its installed
    version is outside the requirement."""

    import_name: str
    requirement: str  # pip requirement, e.g. "monai>=1.3,<2"
    installed: Optional[str] = None

    @property
    def is_torch(self) -> bool:
        return self.import_name == "torch"

    @property
    def missing(self) -> bool:
        return self.installed is None

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.requirement} (not installed)"
        return f"{self.requirement} (installed: {self.installed})"


def is_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def split_requirement(requirement: str) -> Tuple[str, str]:
    """``("monai", ">=1.3,<2")`` for ``"monai>=1.3,<2"``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1), match.group(2).replace(" ", "")


def installed_version(distribution: str, import_name: Optional[str] = None) -> Optional[str]:
    """The installed version of ``distribution`` from its metadata, else the ``__version__`` of an
    already imported module; None when unknown. Never imports the package."""
    try:
        from importlib import metadata

        return metadata.version(distribution)
    except Exception:  # PackageNotFoundError, or unreadable metadata
        pass
    module = sys.modules.get(import_name or distribution)
    version = getattr(module, "__version__", None)
    return str(version) if version else None


def version_satisfies(version: str, specifier: str) -> bool:
    """True when ``version`` is inside ``specifier`` (e.g. ``">=1.3,<2"``); an unparsable version
    or specifier counts as satisfied."""
    if not specifier:
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return simple_version_satisfies(version, specifier)
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return simple_version_satisfies(version, specifier)


def _release(version: str) -> Optional[Tuple[int, ...]]:
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return None if match is None else tuple(int(part) for part in match.group(1).split("."))


def simple_version_satisfies(version: str, specifier: str) -> bool:
    """:func:`version_satisfies` without ``packaging``: compares release numbers (``2.13.0+cpu`` is
    2.13.0; pre-release and local parts are ignored) for ``>=, >, <=, <, ==, !=, ~=`` and ``==X.*``."""
    installed = _release(version)
    if installed is None:
        return True
    for clause in filter(None, specifier.split(",")):
        match = re.match(r"(~=|==|!=|<=|>=|<|>)\s*(.+)$", clause.strip())
        if match is None:
            continue
        operator, text = match.groups()
        wildcard = text.endswith(".*")
        wanted = _release(text[:-2] if wildcard else text)
        if wanted is None:
            continue
        width = max(len(installed), len(wanted))
        have = installed + (0,) * (width - len(installed))
        want = wanted + (0,) * (width - len(wanted))
        if wildcard and operator in ("==", "!="):
            same = installed[:len(wanted)] == wanted
            ok = same if operator == "==" else not same
        elif operator == "~=":
            ok = have >= want and installed[:len(wanted) - 1] == wanted[:-1]
        else:
            ok = {"==": have == want, "!=": have != want, "<=": have <= want, ">=": have >= want,
                  "<": have < want, ">": have > want}[operator]
        if not ok:
            return False
    return True


def _problem(import_name: str, requirement: str, importable: ImportableCheck,
             version_of: VersionReader) -> Optional[Problem]:
    if not importable(import_name):
        return Problem(import_name, requirement)
    distribution, specifier = split_requirement(requirement)
    version = version_of(distribution, import_name)
    if version is None or version_satisfies(version, specifier):
        return None
    return Problem(import_name, requirement, version)


def requirement_problems(action: str = SEGMENT, importable: Optional[ImportableCheck] = None,
                         version_of: Optional[VersionReader] = None) -> List[Problem]:
    """What ``action`` ("segment", "measure", "export", "lesion") needs that is missing or of a
    version outside the requirement; PyTorch first."""
    if action not in ACTION_IMPORTS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTION_IMPORTS)}")
    wanted = ACTION_IMPORTS[action]
    check = importable or is_importable
    read = version_of or installed_version
    problems = []
    for import_name, requirement in (("torch", TORCH_REQUIREMENT),) + REQUIREMENTS:
        if wanted is not None and import_name not in wanted:
            continue
        problem = _problem(import_name, requirement, check, read)
        if problem is not None:
            problems.append(problem)
    return problems


def missing_requirements(importable: Optional[ImportableCheck] = None,
                         version_of: Optional[VersionReader] = None) -> List[str]:
    """Pip requirements of the packages (PyTorch not included) that are missing or whose installed
    version is outside the requirement."""
    return [p.requirement for p in requirement_problems(SEGMENT, importable, version_of) if not p.is_torch]


def torch_missing(importable: Optional[ImportableCheck] = None, version_of: Optional[VersionReader] = None) -> bool:
    """True when PyTorch is missing or its version is outside ``TORCH_REQUIREMENT``."""
    return _problem("torch", TORCH_REQUIREMENT, importable or is_importable,
                    version_of or installed_version) is not None


LogFunction = Callable[[str, str], None]  # (level, message)


def pytorch_extension_installer() -> Optional[Callable[[str], None]]:
    """Installs PyTorch (a version specifier) through 3D Slicer's PyTorch extension, which picks the
    wheel for the GPU and driver; None when the extension is not installed."""
    try:
        import PyTorchUtils
    except ImportError:
        return None

    def install(specifier: str) -> None:
        logic = PyTorchUtils.PyTorchUtilsLogic()
        try:
            torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=specifier)
        except TypeError:  # older PyTorchUtils without the version argument
            torch = logic.installTorch(askConfirmation=False)
        if torch is None:
            raise RuntimeError("the PyTorch extension could not install PyTorch")

    return install


def install(action: str, pip_install: Callable[[List[str]], Any], log: LogFunction,
            torch_installer: Optional[Callable[[str], None]] = None) -> None:
    """Install or upgrade what ``action`` needs: PyTorch with ``torch_installer`` when given (see
    :func:`pytorch_extension_installer`), else with pip; the rest with ``pip_install`` (Slicer's
    ``slicer.util.pip_install``). Raises RuntimeError when something is still missing afterwards."""
    problems = requirement_problems(action)
    if any(problem.is_torch for problem in problems):
        _, specifier = split_requirement(TORCH_REQUIREMENT)
        if torch_installer is not None:
            log("info", f"Installing PyTorch ({specifier}) with the PyTorch extension...")
            torch_installer(specifier)
        else:
            log("info", f"Installing {TORCH_REQUIREMENT} with pip (install the PyTorch extension to get a GPU "
                        "build matched to your driver)...")
            pip_install([TORCH_REQUIREMENT])
    others = [problem.requirement for problem in problems if not problem.is_torch]
    if others:
        log("info", f"Installing {', '.join(others)} with pip...")
        pip_install(others)
    importlib.invalidate_caches()  # make freshly installed packages importable
    still = requirement_problems(action)
    if still:
        raise RuntimeError("still missing or of another version after installation: "
                           + ", ".join(problem.describe() for problem in still))
    loaded = [problem.import_name for problem in problems if not problem.missing and problem.import_name in sys.modules]
    if loaded:
        log("warning", f"Restart Slicer to use the new version of {', '.join(loaded)} in Slicer itself "
                       "(the segmentation process uses it already).")
    log("info", "Dependencies installed.")
