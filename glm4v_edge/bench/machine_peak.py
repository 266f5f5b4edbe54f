"""What this machine can do at most, measured with the threads the variants use: the arithmetic
peaks of onnxruntime's own GEMM kernels (fp32, and int8 through each kernel our graphs can run
int8 arithmetic with) and the read-only memory bandwidth.

These are the rates the stage profile (``stage_profile.py``) divides a stage's multiply-adds and
bytes by. A peak is the best of ``runs`` timed runs of each kernel on large square matrices; the
int8 peak is the fastest of MatMulInteger and MatMulNBits at 8 and 4 bits with int8 arithmetic
(accuracy level 4; 4 bits at each block size an export may use), so no int8 node of a graph can
run faster than it. The read bandwidth is the
fastest of several read-only loops over an array far past any cache (numpy reductions split over
the threads, onnxruntime's ReduceMax, and onnxruntime's MatMulNBits on one row: a decode step's own
kernel and shape, on weights alone): a decode step that reads its weights once cannot beat bytes / it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from glm4v_edge.bench.bandwidth import copy_bandwidth_gbs, thread_slices
from glm4v_edge.bench.onnx_build import cpu_session

FP32_KERNEL = "fp32 MatMul"
INTEGER_KERNEL = "int8 MatMulInteger"
DECODE_LOOP = "onnxruntime MatMulNBits, one row"
GEMM_SIZE = 2048  # M = K = N: past the caches, long enough to time (8.6 G multiply-adds per run)
READ_MIB = 512  # far past any cache


def best_seconds(run, runs: int) -> float:
    run()  # warm-up: packing, allocation
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_model(op: str, weight: np.ndarray, input_type: int, output_type: int):
    """``Y = op(X, W)`` with W a constant, X (M, K) a graph input (MatMulInteger: zero points 0)."""
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, ["X", "W"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("X", input_type, [None, weight.shape[0]])],
        [helper.make_tensor_value_info("Y", output_type, [None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


NBITS_BLOCKS = {4: (32, 64, 128, 256), 8: (128,)}  # the block sizes measured: 8-bit exports use 128


def nbits_kernel(bits: int, block: int) -> str:
    """The name of MatMulNBits' int8-arithmetic kernel at ``bits`` and ``block`` (a key of ``gemm_peaks``)."""
    return f"int8 MatMulNBits {bits}-bit, block {block}"


def gemm_models(size: int) -> dict[str, tuple]:
    """kernel name -> (model, input array): fp32 MatMul, MatMulInteger, MatMulNBits at each
    measured bit width and block size (the block changes the kernel's speed)."""
    from onnx import TensorProto

    from glm4v_edge.export.precisions import in_8bit, to_q4
    from glm4v_edge.export.settings import Q4Settings

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((size, size)).astype(np.float32)
    activations = rng.standard_normal((size, size)).astype(np.float32)
    int8_weight = rng.integers(-127, 128, (size, size), dtype=np.int8)
    int8_activations = rng.integers(0, 256, (size, size), dtype=np.uint8)

    def fp32():
        return matmul_model("MatMul", weight, TensorProto.FLOAT, TensorProto.FLOAT)

    models = {FP32_KERNEL: (fp32(), activations),
              INTEGER_KERNEL: (matmul_model("MatMulInteger", int8_weight, TensorProto.UINT8, TensorProto.INT32),
                               int8_activations)}
    for block in NBITS_BLOCKS[8]:
        eight_bit = fp32()
        models[nbits_kernel(8, block)] = (in_8bit(eight_bit, list(eight_bit.graph.node), Q4Settings()), activations)
    for block in NBITS_BLOCKS[4]:
        models[nbits_kernel(4, block)] = (to_q4(fp32(), Q4Settings(block_size=block)), activations)
    return models


def gemm_peaks(threads: int, size: int = GEMM_SIZE, runs: int = 3) -> dict[str, float]:
    """Multiply-adds per second (G) of each kernel, best of ``runs``."""
    peaks = {}
    for name, (model, activations) in gemm_models(size).items():
        kernel, feed = cpu_session(model, threads), {"X": activations}
        seconds = best_seconds(lambda kernel=kernel, feed=feed: kernel.run(None, feed), runs)
        peaks[name] = round(size**3 / seconds / 1e9, 1)
    return peaks


def decode_kernel(threads: int, read_bytes: int, block: int = 128):
    """One token through MatMulNBits (4 bits, int8 arithmetic) over ``read_bytes`` of packed
    weights, the kernel and shape of a decode step: -> (run, bytes it reads)."""
    from onnx import TensorProto, helper, numpy_helper

    k = 16384
    n = read_bytes * 2 // k
    rng = np.random.default_rng(0)
    packed = np.full((n, k // block, block // 2), 0x5A, dtype=np.uint8)  # its speed does not depend on the codes
    scales = np.full(n * k // block, 0.01, np.float32)
    node = helper.make_node("MatMulNBits", ["X", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "decode", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    kernel = cpu_session(model, threads)
    activations = rng.standard_normal((1, k)).astype(np.float32)
    return (lambda: kernel.run(None, {"X": activations})), packed.nbytes + scales.nbytes


def array_read_loops(words: np.ndarray, threads: int, pool: ThreadPoolExecutor) -> dict:
    """name -> (a function reading ``words`` once, split over ``threads`` (numpy's parts run in
    ``pool``: numpy releases the GIL), the bytes it reads): numpy's reductions and onnxruntime's
    ReduceMax, all over the one array."""
    from onnx import TensorProto, helper

    floats = words.view(np.float32)
    parts = thread_slices(len(words), threads)

    def split(reduce):
        return lambda: list(pool.map(reduce, parts))

    reduce_max = helper.make_model(helper.make_graph(
        [helper.make_node("ReduceMax", ["X"], ["Y"], keepdims=0)], "read",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [])]), opset_imports=[helper.make_opsetid("", 21)])
    kernel = cpu_session(reduce_max, threads)
    return {
        "numpy bitwise_or.reduce": (split(lambda part: np.bitwise_or.reduce(words[part])), words.nbytes),
        "numpy float32 max": (split(lambda part: floats[2 * part.start:2 * part.stop].max()), words.nbytes),
        "onnxruntime ReduceMax": (lambda: kernel.run(None, {"X": floats}), words.nbytes),
    }


def read_loops(threads: int, read_bytes: int, pool: ThreadPoolExecutor) -> dict:
    """``array_read_loops`` over a new array of ``read_bytes``, and a decode step's own kernel."""
    decode, decode_bytes = decode_kernel(threads, read_bytes)
    return {**array_read_loops(np.ones(read_bytes // 8, dtype=np.uint64), threads, pool),
            DECODE_LOOP: (decode, decode_bytes)}


class ReadProbe:
    """The read-only loops of one array, kept in a variant's own process to be measured in turns
    with its decode runs: a shared machine's read rate swings from second to second (numpy's loop
    34 to 64 GB/s on 2026-12-08), and two samples before and after the variants can miss the fast
    moments the decode runs see (a decode then "beats" its floor).

    Made before the variant loads, its array stays resident to the end: the process's peak
    RSS less ``resident_mib`` is the variant's own (the machine has no swap to page it out)."""

    def __init__(self, threads: int, read_mib: int = READ_MIB):
        self.pool = ThreadPoolExecutor(threads)
        self.words = np.ones(read_mib * 2**20 // 8, dtype=np.uint64)  # written: every page resident
        self.loops = array_read_loops(self.words, threads, self.pool)
        self.samples: list[dict[str, float]] = []

    @property
    def resident_mib(self) -> float:
        return self.words.nbytes / 2**20

    def sample(self, runs: int = 3) -> None:
        self.samples.append(loop_rates(self.loops, runs))

    def fastest(self) -> dict:
        """Each loop's best over the samples, the fastest of them, and how many samples there were."""
        reads = faster_reads(self.samples)
        return {"read_gbs": reads, **fastest_read(reads), "samples": len(self.samples)}


def loop_rates(loops: dict, runs: int) -> dict[str, float]:
    """GB/s of each read loop (``array_read_loops``' form), best of ``runs``."""
    return {name: round(size / best_seconds(loop, runs) / 1e9, 2) for name, (loop, size) in loops.items()}


def read_bandwidths(threads: int, read_mib: int = READ_MIB, runs: int = 5) -> dict[str, float]:
    """GB/s of each read-only loop, best of ``runs``."""
    with ThreadPoolExecutor(threads) as pool:
        return loop_rates(read_loops(threads, read_mib * 2**20, pool), runs)


def faster_reads(samples: list[dict[str, float]]) -> dict[str, float]:
    """Each read loop's best GB/s over several samples: a shared machine's bandwidth drifts, and
    a floor measured at a slow moment is one a decode step can beat."""
    return {name: max(sample[name] for sample in samples) for name in samples[0]}


def fastest_read(reads: dict[str, float]) -> dict:
    """The read-only bandwidth a floor divides by: the fastest loop's GB/s, and which loop it was."""
    return {"read_bandwidth_gbs": max(reads.values()), "read_loop": max(reads, key=reads.get)}


def measure_machine_peak(threads: int, gemm_size: int = GEMM_SIZE, read_mib: int = READ_MIB) -> dict:
    """The peaks the stage profile is bounded by, with what each best came from."""
    gemm = gemm_peaks(threads, gemm_size)
    reads = read_bandwidths(threads, read_mib)
    int8 = {name: rate for name, rate in gemm.items() if name.startswith("int8")}
    return {
        "threads": threads, "gemm_size": gemm_size, "read_mib": read_mib,
        "gemm_gmacs": gemm,
        "fp32_gmacs": gemm[FP32_KERNEL],
        "int8_gmacs": max(int8.values()),
        "int8_kernel": max(int8, key=int8.get),
        "read_gbs": reads,
        **fastest_read(reads),
        "copy_bandwidth_gbs": copy_bandwidth_gbs("cpu", threads=threads),
    }
