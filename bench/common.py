"""Shared pieces of the benchmarks: device/dtype flags, tiny model configs, one training step, side-by-side
timing, peak-memory measurement in a fresh process, and table printing.

Timing: every variant is timed in the same process, round-robin (variant a, b, c, a, b, c, ...), so that load
from other programs on a shared machine hits all variants alike; we report medians and ratios of medians.
On CPU the default is one thread: on a machine shared with other jobs, two OpenMP threads spend most of their
time waiting for each other and per-step times scatter by 5×; one thread gives steady numbers.

Peak memory of one step is the most memory the step holds above what was held just before it, measured after
a warm-up step (so gradients and AdamW state are already allocated or freed as in any later step):
    CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() before.
    CPU:  the running total of tensor allocations that torch.profiler(profile_memory=True) records during the
          step (the "Total Allocated" of its [memory] events), maximised over the step: tensor bytes only, as
          the CUDA number.
    CPU cross-check, from the kernel, which also sees allocations made outside torch's allocator: the
          resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just before the step) minus
          the RSS before it. It only means something in a process whose malloc returns freed memory, so
          ``measure_isolated`` runs each configuration in a fresh process with a fixed mmap threshold.
"""

import argparse
import json
import multiprocessing
import os
import queue as queue_module
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from tqdm import tqdm
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import ginformer  # noqa: F401  (registers the ginformer model type)
from ginformer.modeling import GinformerConfig, GinformerForCausalLM

MIB = 2**20


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads; default 1 on CPU (stable on a shared machine)"
    )
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for a JSON copy of the results")
    return parser


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    torch.manual_seed(args.seed)
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.threads is not None or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    return torch.device(args.device), getattr(torch, args.dtype)


def machine() -> str:
    """One line naming the hardware, for the header of every table."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, load {load}"


def model_config(kind: str, *, hidden: int, heads: int, layers: int, **options) -> GinformerConfig:
    """A small ginformer config; every variant of one benchmark shares all fields but the attention options."""
    return GinformerConfig(
        vocab_size=256,  # byte-sized: keeps the LM head from dominating the step
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=16384,
        attention_kind=kind,
        **options,
    )


def smollm2_config(layers: int) -> LlamaConfig:
    """SmolLM2-135M's shape (its config.json), with `layers` decoder layers."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def build_model(config: GinformerConfig, device: torch.device, dtype: torch.dtype) -> GinformerForCausalLM:
    return GinformerForCausalLM(config).to(device=device, dtype=dtype)


def training_step(model: torch.nn.Module, input_ids: torch.Tensor) -> Callable[[], None]:
    """A closure running forward, backward and one AdamW step of a causal LM on ``input_ids``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def layer_inputs(config: GinformerConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype):
    """Random hidden states (B, T, hidden) that require grad, as inside a model, and their RoPE (cos, sin)."""
    hidden_states = torch.randn(batch, length, config.hidden_size, device=device, dtype=dtype, requires_grad=True)
    rotary = LlamaRotaryEmbedding(config).to(device)
    position_embeddings = rotary(hidden_states, torch.arange(length, device=device)[None])
    return hidden_states, position_embeddings


def layer_training_step(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings) -> Callable[[], None]:
    """A closure running one attention layer's forward, the backward of mean(output²), and one AdamW step."""
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)

    def step() -> None:
        output = layer(hidden_states, position_embeddings)
        output = output[0] if isinstance(output, tuple) else output  # graph layers also return their adjacency
        output.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hidden_states.grad = None

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    steps: dict[str, Callable[[], None]], device: torch.device, *, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of every closure, timed round-robin in one process."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in tqdm(range(repeats), desc=f"timing {', '.join(steps)}", leave=False):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _status_bytes(field: str) -> int | None:
    """A size field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _profiled_peak_bytes(step: Callable[[], None]) -> int:
    """Peak of the running total of CPU tensor allocations during ``step``, from torch.profiler's memory events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as trace:
            events = json.load(trace)["traceEvents"]
    cpu_memory = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    return max([0, *(args["Total Allocated"] for args in cpu_memory)])


def peak_memory(step: Callable[[], None], device: torch.device) -> dict[str, int | None]:
    """Peak bytes held by one call of ``step`` above what was held before it (see the module docstring):
    ``peak_bytes`` from the allocator; on CPU also ``rss_delta_bytes`` from the kernel (None where it cannot be
    read, and on CUDA, where host memory says nothing about the device's)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "rss_delta_bytes": None}
    rss_peak_reset = _reset_rss_peak()
    rss_before = _status_bytes("VmRSS")
    allocated = _profiled_peak_bytes(step)
    rss_peak = _status_bytes("VmHWM")
    rss_delta = rss_peak - rss_before if rss_peak_reset and rss_peak is not None and rss_before is not None else None
    return {"peak_bytes": allocated, "rss_delta_bytes": rss_delta}


def _run_in_child(queue, function, kwargs):
    try:
        queue.put(("ok", function(**kwargs)))
    except BaseException as error:  # noqa: BLE001  (report any failure to the parent, e.g. out of memory)
        queue.put(("error", f"{type(error).__name__}: {error}"))


def measure_isolated(function: Callable[..., dict], **kwargs) -> dict:
    """Run ``function(**kwargs)`` (a module-level function returning a dict) in a fresh spawned process, so that
    its RSS high-water mark and allocator state owe nothing to earlier configurations."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_run_in_child, args=(queue, function, kwargs))
    # A fixed mmap threshold makes glibc hand every block of 64 KiB or more back to the kernel when it is freed,
    # so the child's RSS follows the memory it really holds (the default threshold adapts and keeps freed blocks).
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        child.start()
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
    while True:
        try:
            status, result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not child.is_alive():
                status, result = "error", f"the subprocess died with exit code {child.exitcode} (out of memory?)"
                break
    child.join()
    if status != "ok":
        raise RuntimeError(f"{function.__name__}({kwargs}) failed in its subprocess: {result}")
    return result


def _format(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """A plain fixed-width table: floats of 100 or more as integers, smaller ones to 3 significant digits."""
    cells = [[_format(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}\n" + "  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def save_results(args: argparse.Namespace, name: str, results: dict) -> None:
    """Write ``results`` as JSON to ``<args.out>/<name>.json`` when an output folder was given."""
    if not args.out:
        return
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as handle:
        json.dump({"machine": machine(), "args": vars(args), **results}, handle, indent=2)
