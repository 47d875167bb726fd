"""Builds jcnn's one compiled part: the oneDNN convolution kernels (jcnn/ops/csrc/onednn_conv.cc),
an optional extension. Everything else about the package is in pyproject.toml.

The kernels are XLA FFI handlers loaded with ctypes by jcnn.ops.onednn (not a Python module), so
the library is named ``jcnn/ops/libjcnn_onednn.so`` and has no Python ABI tag. They compile
against the XLA FFI headers of jaxlib 0.6.0 vendored in csrc/third_party (API 0.1, accepted by
every jaxlib since) and oneDNN 3.2 from PyPI's ``onednn-devel-cpu-gomp`` (a build requirement on
Linux x86_64, see pyproject.toml), which installs its headers and libdnnl.so.3 under the
environment's ``include/`` and ``lib/`` rather than site-packages: both are found through the
packages' file lists. Where oneDNN is absent (another platform, ``JCNN_DISABLE_ONEDNN=1``) the
extension is skipped, and where it fails to compile the failure is a warning (``optional=True``):
jcnn then installs as pure Python and runs its pure-JAX convolutions.
"""

import os
import sys
from importlib import metadata
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NAME = "jcnn.ops.libjcnn_onednn"
CSRC = Path("jcnn") / "ops" / "csrc"


def _installed_file(dist: str, suffix: str) -> Path | None:
    """The installed file of package ``dist`` whose path ends with ``suffix``, if any."""
    try:
        files = metadata.distribution(dist).files or ()
    except metadata.PackageNotFoundError:
        return None
    name = suffix.rsplit("/", 1)[-1]
    for f in files:
        if f.name == name:
            # RECORD paths are relative to site-packages (``../../libdnnl.so.3``): resolve first.
            path = Path(f.locate()).resolve()
            if path.as_posix().endswith(suffix) and path.exists():
                return path
    return None


def _onednn() -> tuple[Path, Path] | str:
    """(include dir, lib dir) of oneDNN, or why it cannot be built."""
    if os.environ.get("JCNN_DISABLE_ONEDNN", "") not in ("", "0"):
        return "JCNN_DISABLE_ONEDNN is set"
    header = _installed_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    library = _installed_file("onednn-cpu-gomp", "lib/libdnnl.so.3")
    if header is None or library is None:
        return "the onednn-devel-cpu-gomp / onednn-cpu-gomp packages are not installed (Linux x86_64 only)"
    return header.parents[2], library.parent


class BuildExt(build_ext):
    """build_ext that names the kernel library plainly (``libjcnn_onednn.so``)."""

    def get_ext_filename(self, fullname):
        # Called with the dotted name and (by distutils' get_ext_fullpath) with its last part.
        if fullname in (NAME, NAME.rsplit(".", 1)[-1]):
            return os.path.join(*fullname.split(".")[:-1], "libjcnn_onednn.so")
        return super().get_ext_filename(fullname)


def _extensions():
    found = _onednn()
    if isinstance(found, str):
        print(f"jcnn: building without the oneDNN kernels: {found}.", file=sys.stderr)
        return []
    include, lib = found
    return [
        Extension(
            NAME,
            sources=[str(CSRC / "onednn_conv.cc")],
            include_dirs=[str(include)],
            library_dirs=[str(lib)],
            libraries=["dnnl", "gomp"],  # gomp: omp_set_num_threads (libdnnl loads the same one)
            language="c++",
            # -isystem: the vendored XLA headers warn (-Wreturn-type) under g++; not ours to fix.
            extra_compile_args=["-std=c++17", "-O3", "-g0", "-isystem", str(CSRC / "third_party")],
            optional=True,
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
