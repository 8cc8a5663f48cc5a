"""What the machine offers the CUDA path: GPU, driver, library versions, missing packages.

    python3 benchmarks/gpu_env.py            # one JSON line; exits 1 when a package the CUDA path imports is missing

The first part of benchmarks/gpu_check.sh, so that when a later part fails its report already
says which torch, transformers and GPU it ran on. REQUIRED are the packages the training,
parity, sampler and end-to-end paths import (from pyproject.toml's dependencies); the others
(openai, datasketch, wordfreq, lemminflect, llama-cpp-python) serve the data and LLM stages,
which the GPU check does not run, and are only reported.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from importlib import metadata

# import name -> distribution name
REQUIRED = {
    "torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers", "accelerate": "accelerate",
    "safetensors": "safetensors", "numpy": "numpy", "yaml": "pyyaml", "rich": "rich", "tensorboard": "tensorboard",
}
OPTIONAL = {"openai": "openai", "datasketch": "datasketch", "wordfreq": "wordfreq", "lemminflect": "lemminflect", "llama_cpp": "llama-cpp-python"}


def versions(packages: dict[str, str], load: bool) -> tuple[dict[str, str], list[str]]:
    """(version by distribution, missing distributions); `load` imports each module (a broken
    install is then as missing as an absent one), else it is only looked up."""
    found, missing = {}, []
    for module, dist in packages.items():
        try:
            if load:
                importlib.import_module(module)
            elif importlib.util.find_spec(module) is None:
                raise ImportError(module)
        except Exception:  # noqa: BLE001 - any failure to import means: not usable
            missing.append(dist)
            continue
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "?"
    return found, missing


def gpu_info() -> dict:
    import torch

    info: dict = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()[:200]
    return info


def main() -> int:
    found, missing = versions(REQUIRED, load=True)
    optional, optional_missing = versions(OPTIONAL, load=False)
    result = {"check": "env", "python": sys.version.split()[0], "packages": found, "missing": missing, "optional_missing": optional_missing, "optional": optional}
    if "torch" in found:
        result.update(gpu_info())
    result["ok"] = not missing
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
