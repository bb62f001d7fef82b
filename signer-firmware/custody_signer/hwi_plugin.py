"""Registers the reference signer with HWI, in every Python process of the environment.

HWI finds device modules by name under `hwilib.devices` and enumerates those listed in its `__all__`.
Rather than write into HWI's installed files, a one-line `.pth` file (written by
`python -m custody_signer.hwi_plugin install`, which `make` runs) calls `install()` at interpreter
start. `install()` only adds an import hook; HWI itself is imported when something imports it, and
then `hwilib.devices.custodysigner` is this project's `custody_signer.hwi_device`. It runs in every
process, so it imports only what the interpreter has already loaded (loaders are duck-typed).
"""
from __future__ import annotations

import importlib
import importlib.machinery
import sys

MODULE = "hwilib.devices.custodysigner"
PTH_NAME = "custody_signer_hwi.pth"


class _DeviceModuleLoader:
    def create_module(self, spec):
        return importlib.import_module("custody_signer.hwi_device")

    def exec_module(self, module):
        pass


class _ListingLoader:
    """Runs `hwilib/devices/__init__.py` as usual, then lists the reference signer in its `__all__`."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _list(module)


class _Finder:
    def find_spec(self, name, path, target=None):
        if name == MODULE:
            return importlib.machinery.ModuleSpec(name, _DeviceModuleLoader())
        if name == "hwilib.devices":
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ListingLoader(spec.loader)
            return spec
        return None


def _list(devices_module) -> None:
    if "custodysigner" not in devices_module.__all__:
        devices_module.__all__.append("custodysigner")


def install() -> None:
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
    if "hwilib.devices" in sys.modules:               # HWI was imported before the hook
        _list(sys.modules["hwilib.devices"])


def write_pth(site_packages=None):
    import sysconfig
    from pathlib import Path
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    from .durable import atomic_write
    atomic_write(target, "import custody_signer.hwi_plugin as p; p.install()\n", mode=0o644)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m custody_signer.hwi_plugin install")
    print(f"HWI plugin: {write_pth()}")
