"""Builds genperf and its extension genperf._C from csrc/: C++ (OpenMP) always, CUDA when nvcc is found.

Build switches (environment):
  GENPERF_FORCE_CUDA=1   fail instead of building CPU-only when nvcc is missing
  GENPERF_SKIP_CUDA=1    build the C++ kernels only
  GENPERF_SKIP_EXT=1     build no extension at all (the ops then run Triton or the reference)
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default "8.0;9.0"; CI compiles one)
  GENPERF_CPU_FLAGS      instruction-set flags of the C++ kernels (default "-march=native -mprefer-vector-width=512":
                         the extension is built where it is installed; use e.g. -march=x86-64-v3 for a wheel
                         that travels)
  MAX_JOBS               parallel compile jobs (default: what free memory allows, 4 GiB a job)
Install with `pip install --no-build-isolation -e .` so the build uses the torch already installed.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup


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


def extensions():
    if _flag("GENPERF_SKIP_EXT"):
        print("genperf: GENPERF_SKIP_EXT=1, building no extension (the cpu and cuda backends will be missing)")
        return [], {}
    cuda_home = None if _flag("GENPERF_SKIP_CUDA") else _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch's build helpers read it
    elif _flag("GENPERF_FORCE_CUDA"):
        raise RuntimeError("GENPERF_FORCE_CUDA=1 but no nvcc was found (set CUDA_HOME)")
    elif not _flag("GENPERF_SKIP_CUDA"):
        print("genperf: WARNING: no nvcc found (set CUDA_HOME); building the C++ kernels without CUDA")
    os.environ.setdefault("MAX_JOBS", _max_jobs())
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # -fno-trapping-math lets GCC if-convert the clamps in cpu_math.h, which is what vectorizes the loops.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", *os.environ.get("GENPERF_CPU_FLAGS", CPU_FLAGS).split()]
    sources = ["csrc/ops.cpp", "csrc/coupling_cpu.cpp", "csrc/coupling_autograd.cpp", "csrc/gradient_penalty_cpu.cpp"]
    if cuda_home:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension("genperf._C", sources + ["csrc/coupling_cuda.cu", "csrc/gradient_penalty_cuda.cu"],
                            define_macros=[("GENPERF_WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("genperf._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(
    name="genperf",
    version="0.1.0",
    description="Fast, trustworthy training of classic deep generative models (GANs, VAEs, RealNVP)",
    packages=find_packages(include=["genperf", "genperf.*"]) + ["genperf.kernels"],
    package_dir={"genperf.kernels": "kernels"},  # kernels/ ships as genperf.kernels, never as a top-level package
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "torchvision", "numpy", "scikit-learn", "matplotlib", "tqdm", "pillow"],
    # --tensorboard; Inception FID (genperf.evaluate --inception-weights)
    extras_require={"tensorboard": ["tensorboard"], "fid": ["torchmetrics[image]"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
