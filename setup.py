"""Builds genperf and its extension genperf._C from csrc/: C++ (OpenMP) always, CUDA for the GPUs this
machine has (or the architectures asked for).

Build switches (environment):
  TORCH_CUDA_ARCH_LIST   CUDA architectures to build, e.g. "9.0" or "8.0;9.0"; builds the CUDA kernels even
                         where no GPU is visible (CI compiles them this way). Unset: the visible GPUs' own
                         architectures, or no CUDA kernels where no GPU is visible.
  GENPERF_FORCE_CUDA=1   build the CUDA kernels without a visible GPU (for "8.0;9.0" unless the list is given)
                         and fail instead of building CPU-only when nvcc is missing
  GENPERF_SKIP_CUDA=1    build the C++ kernels only
  GENPERF_SKIP_EXT=1     build no extension at all (the ops then run Triton or the reference)
  GENPERF_CPU_FLAGS      instruction-set flags of the C++ kernels (default "-march=native -mprefer-vector-width=512":
                         the extension is built where it is installed; use e.g. -march=x86-64-v3 for a wheel
                         that travels)
  MAX_JOBS               parallel compile jobs (default: what free memory allows, 4 GiB a job)
Install with `pip install --no-build-isolation -e .` so the build uses the torch already installed; add -v to
watch the compiler. Object files stay in build/temp.<cpu|cuda-ARCHS>/ and ninja recompiles only what changed, so
reinstalling an unchanged tree relinks in seconds.
"""

import glob
import os
import shutil
import time

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


# GCC vectorizes with 256-bit registers on AVX-512 CPUs unless told otherwise; 512 halves the coupling
# kernels' time on the development CPU. The flag is a no-op where AVX-512 is missing.
CPU_FLAGS = "-march=native -mprefer-vector-width=512"


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _find_cuda_home():
    """CUDA_HOME for torch's build: the first of $CUDA_HOME, the toolkit of the nvcc on PATH and
    /usr/local/cuda* that has both bin/nvcc and lib64/libcudart.so (an nvcc wrapper script on PATH,
    as on this machine, does not count); None if there is none."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and glob.glob(os.path.join(home, "lib*", "libcudart.so*")):
            return home
    return None


def _max_jobs():
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        free_gib = 8
    return str(max(1, min(os.cpu_count() or 1, int(free_gib // 4))))


def _cuda_arch_list():
    """The CUDA architectures to build: TORCH_CUDA_ARCH_LIST, else the visible GPUs' own, else None."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    import torch

    if torch.cuda.is_available():
        return ";".join(
            sorted({"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())})
        )
    return "8.0;9.0" if _flag("GENPERF_FORCE_CUDA") else None


def _build_ext_class(build_temp, plan):
    """torch's BuildExtension with a persistent object folder (pip's editable build would use a fresh temporary
    one, so every reinstall recompiled everything) and lines saying what is built and how long it took (printed
    when building, not each time pip runs setup.py for metadata)."""
    from torch.utils.cpp_extension import BuildExtension

    class GenperfBuildExt(BuildExtension):
        def initialize_options(self):
            super().initialize_options()
            self.build_temp = build_temp  # an explicit --build-temp still wins

        def build_extension(self, ext):
            print(f"genperf: {plan}", flush=True)
            print(
                f"genperf: compiling {ext.name}: {len(ext.sources)} source files, objects in {self.build_temp}; "
                "unchanged ones are reused",
                flush=True,
            )
            start = time.perf_counter()
            super().build_extension(ext)
            print(f"genperf: {ext.name} built in {time.perf_counter() - start:.0f} s", flush=True)

    return GenperfBuildExt


def extensions():
    if _flag("GENPERF_SKIP_EXT"):
        print("genperf: GENPERF_SKIP_EXT=1, building no extension (the cpu and cuda backends will be missing)")
        return [], {}
    arch_list = None if _flag("GENPERF_SKIP_CUDA") else _cuda_arch_list()
    cuda_home = _find_cuda_home() if arch_list else None
    if _flag("GENPERF_SKIP_CUDA"):
        plan = "GENPERF_SKIP_CUDA=1, building the C++ kernels only"
    elif not arch_list:
        plan = (
            "no GPU visible, building the C++ kernels only (set TORCH_CUDA_ARCH_LIST, e.g. 9.0, to compile the CUDA "
            "kernels anyway)"
        )
    elif not cuda_home:
        if _flag("GENPERF_FORCE_CUDA"):
            raise RuntimeError("GENPERF_FORCE_CUDA=1 but no nvcc was found (set CUDA_HOME)")
        plan = (
            f"WARNING: CUDA {arch_list} wanted but no nvcc found (set CUDA_HOME); building the C++ kernels without CUDA"
        )
    else:
        os.environ["CUDA_HOME"] = cuda_home  # before torch's build helpers read it
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        plan = f"building the C++ kernels and the CUDA kernels for {arch_list} with {cuda_home}"
    os.environ.setdefault("MAX_JOBS", _max_jobs())
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    # -fno-trapping-math lets GCC if-convert the clamps in cpu_math.h, which is what vectorizes the loops.
    # -g0 overrides the -g in Python's own CFLAGS: debug info for torch's headers doubled each file's compile
    # time (coupling_cpu.cpp 83 s -> 38 s on the 2-core EPYC).
    cxx = [
        "-O3",
        "-g0",
        "-std=c++20",
        "-fopenmp",
        "-fno-trapping-math",
        "-fno-math-errno",
        *os.environ.get("GENPERF_CPU_FLAGS", CPU_FLAGS).split(),
    ]
    sources = [
        "csrc/ops.cpp",
        "csrc/checks.cpp",
        "csrc/coupling_cpu.cpp",
        "csrc/coupling_autograd.cpp",
        "csrc/gradient_penalty_cpu.cpp",
    ]
    if cuda_home:
        ext = CUDAExtension(
            "genperf._C",
            sources + ["csrc/coupling_cuda.cu", "csrc/gradient_penalty_cuda.cu"],
            define_macros=[("GENPERF_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
            extra_link_args=["-fopenmp"],
        )
        flavour = "cuda-" + arch_list.replace(";", "-").replace(" ", "-")
    else:
        ext = CppExtension("genperf._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
        flavour = "cpu"
    # One object folder per flavour, so switching between a CPU-only and a CUDA build reuses both.
    return [ext], {"build_ext": _build_ext_class(os.path.join(HERE, "build", "temp." + flavour), plan)}


ext_modules, cmdclass = extensions()
# The project's metadata and dependencies are in pyproject.toml; this adds the packages' layout and the extension.
setup(
    packages=find_packages(include=["genperf", "genperf.*"]) + ["genperf.kernels"],
    package_dir={"genperf.kernels": "kernels"},  # kernels/ ships as genperf.kernels, never as a top-level package
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
