"""User-facing errors. The CLI prints them as one line and exits non-zero, without a traceback."""


class EmomoeError(Exception):
    """An error caused by the user's input (file, field or value), not by a bug in emomoe."""


class ConfigError(EmomoeError, ValueError):
    """A config key is unknown, has the wrong type, or holds an invalid value. The message names it."""


class DataError(EmomoeError):
    """Input data is missing, malformed or inconsistent. The message names the file."""


class MissingDependency(EmomoeError, ImportError):
    """An optional feature's package is not installed. The message names the extra that brings it."""


def optional_import(module: str, extra: str, feature: str):
    """Import `module` of an optional feature, or raise MissingDependency naming `pip install 'emomoe[extra]'`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{feature} needs the '{module.split('.')[0]}' package: pip install 'emomoe[{extra}]'") from None


def require(feature: str, extra: str, *modules: str) -> None:
    """MissingDependency, before any work, unless the packages of `modules` are installed (found,
    not imported: that can take seconds), naming the extra that brings them."""
    import importlib.util

    def installed(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            return False

    missing = [m for m in modules if not installed(m)]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise MissingDependency(f"{feature} needs the {names} package{'s' if len(missing) > 1 else ''}: "
                                f"pip install 'emomoe[{extra}]'")


def warn(message: str) -> None:
    """Tell the user something they should know but that does not stop the work: one line on stderr."""
    import sys

    print(f"emomoe: warning: {message}", file=sys.stderr, flush=True)
