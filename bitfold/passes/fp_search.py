"""LLM-FP4's per-layer search of FP formats and real-valued exponent biases (the "FPQ baseline").

Notation: a layer ``Y = X Wᵀ`` with ``X`` [T, K] (calibration rows from the full-precision
model) and ``W`` [N, K]. ``Q_f(x; b̃) = f.quantize(x, f.scale_for_bias(b̃))`` quantizes to
format ``f`` with real exponent bias ``b̃``. A larger bias is a smaller range:
``max(b̃) = f.max · 2^(f.bias − b̃)`` (:func:`max_for_bias`), whose inverse ``f.bias_for_max``
gives the MinMax bias. The weight has one bias per output channel (row of ``W``), the
activation one per tensor. Every step minimizes the layer-output error

    L = ‖Xq Wqᵀ − X Wᵀ‖²_F / (T·N),   Xq = Q_fa(X; b̃a),   Wq = Q_fw(W; b̃w) row by row,

holding the other tensor at its current quantization, in ``rounds`` rounds of
weight bias → activation bias → weight format → activation format.

Candidates (``k`` per channel or tensor, from the MinMax bias ``b̃₀`` of the range ``m``):
``grid="bias"``: ``b̃ = γ·b̃₀`` for ``γ`` linearly spaced in [0.01, 1.2] (the paper's grid;
what it means depends on the sign of ``b̃₀``, and it collapses when ``b̃₀ ≈ 0``);
``grid="clip"``: ``b̃ = bias_for_max(r·m)`` for clip ratios ``r = 0.3 + 0.7·i/k``, ``i = 1..k``.
Two more candidates are always tried: the current bias and ``b̃₀``, so ``L`` never rises.
A format step tries every other format at two biases, the current range ``max(b̃)``
re-expressed in it and its own MinMax bias (per channel for weights, the better of the two),
and switches only if ``L`` drops.

Speed. Weight step: output column ``n`` depends only on row ``n`` of ``W``, so with
``D = Wq − W`` and ``Δ = Xq − X`` the error of channel ``n`` is

    ‖Xq d_n + Δ w_n‖² = d_nᵀ G d_n + 2 d_n·f_n + ‖Δ w_n‖²,   G = XqᵀXq,   F = W ΔᵀXq,

one batched GEMM (``D @ G``, or ``D @ Xqᵀ`` when ``T < K``) for all channels of a block of
candidates, cost ``N·K·min(T, K)`` per candidate, then a per-channel argmin. Activation
step: with ``Δ_c = Q(X; c) − X`` and ``E = X Dᵀ``,

    ‖Xq Wqᵀ − X Wᵀ‖² = ‖Δ_c Wqᵀ + E‖² = ⟨Δ_c A, Δ_c⟩ + 2⟨Δ_c, E Wq⟩ + ‖E‖²,   A = WqᵀWq

(``Δ_c Wqᵀ`` directly when ``N ≤ K``), cost ``T·K·min(N, K)``. Activation candidates are
screened on ``screen_tokens`` rows and the winner confirmed on all rows. Every term is
error-sized, so float32 loses nothing to cancellation. By default (``exact_top``) the quadratic
terms are first replaced by their diagonals, ``Σ_j G_jj d_j²`` and ``Σ_tj A_jj Δ_tj²``: the
quantization errors of different inputs are nearly uncorrelated, so this ranks candidates
almost as the exact error does at the cost of quantizing them; only the few best candidates
per channel (and the current one) then pay for the exact GEMM. Values are quantized in blocks of ``chunk_elements`` (bounded
memory, and cache-resident temporaries). The grid is searched coarse to fine when
``stride > 1``: every ``stride``-th point, then finer steps within ``stride − 1`` points of each
channel's best (:func:`grid_search`); ``stride=1`` is the paper's exhaustive search. A bias step
whose inputs did not change since it last ran is skipped: it would return the same answer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch

from bitfold.ir import formats
from bitfold.ir.formats import FloatFormat

GAMMA1, GAMMA2 = 0.01, 1.2
MIN_CLIP_RATIO = 0.3
GRIDS = ("bias", "clip")
#: LLM-FP4's format candidates per bit width; the first is where the search starts.
FORMATS = {4: ("e2m1", "e3m0", "e1m2"), 8: ("e4m3", "e5m2", "e3m4", "e2m5", "e1m6")}
_TINY = 1e-30  # stands in for a zero range (an all-zero channel: any bias is exact)
_SEED = 0
V = TypeVar("V")


def default_formats(bits: int) -> Tuple[str, ...]:
    """LLM-FP4's candidates for 4 and 8 bits; other widths get every ``ExMy``, E ≈ bits/2 first."""
    if bits in FORMATS:
        return FORMATS[bits]
    if not 3 <= bits <= 8:
        raise ValueError(f"FP formats have 3 to 8 bits, got {bits}")
    order = sorted(range(1, bits), key=lambda e: (abs(e - bits // 2), e))
    return tuple(f"e{e}m{bits - 1 - e}" for e in order)


def float_format(name: str) -> FloatFormat:
    """The :class:`FloatFormat` called ``name``; a clear error for any other kind of format."""
    fmt = formats.get(name)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"the FP search needs an ExMy float format, got {fmt.name} ({type(fmt).__name__})")
    return fmt


def max_for_bias(fmt: FloatFormat, bias: torch.Tensor | float) -> torch.Tensor:
    """The largest magnitude of ``fmt`` under the real bias ``bias``.

    The inverse of ``fmt.bias_for_max`` for the LLM-FP ``ExMy`` family. (``bias_for_max``
    assumes that family's max, so for ``fp8_e4m3``/``fp8_e5m2`` it undershoots the range.)
    """
    return fmt.max * torch.exp2(fmt.bias - torch.as_tensor(bias, dtype=torch.float64))


def bias_candidates(fmt: FloatFormat, max_value: torch.Tensor | float, grid: str, k: int) -> torch.Tensor:
    """[k, *max_value.shape] float64 bias candidates for the ranges ``max_value`` (module doc)."""
    if k < 1:
        raise ValueError(f"the grid needs k >= 1 points, got {k}")
    max_value = torch.as_tensor(max_value, dtype=torch.float64).clamp_min(_TINY)
    shape = (k,) + (1,) * max_value.dim()
    if grid == "bias":
        gammas = torch.linspace(GAMMA1, GAMMA2, k, dtype=torch.float64).reshape(shape)
        return gammas * fmt.bias_for_max(max_value)
    if grid == "clip":
        ratios = MIN_CLIP_RATIO + (1 - MIN_CLIP_RATIO) * torch.arange(1, k + 1, dtype=torch.float64) / k
        return fmt.bias_for_max(ratios.reshape(shape) * max_value)
    raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")


def quantize_rows(fmt: FloatFormat, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``W`` [N, K] quantized with one bias per row (output channel)."""
    scale = fmt.scale_for_bias(bias)
    return _by_rows(lambda r: fmt.quantize(W[r], scale[r], axis=0), W)


def quantize_tensor(fmt: FloatFormat, X: torch.Tensor, bias: torch.Tensor | float) -> torch.Tensor:
    """``X`` quantized with one bias for the whole tensor."""
    scale = fmt.scale_for_bias(bias)
    return _by_rows(lambda r: fmt.quantize(X[r], scale), X)


def _by_rows(quantize: Callable[[slice], torch.Tensor], x: torch.Tensor, budget: int = 1 << 18) -> torch.Tensor:
    """``quantize`` applied to blocks of rows of ``x`` of about ``budget`` values, concatenated.

    The quantizer runs several times faster on blocks whose temporaries stay in cache.
    """
    if x.dim() < 2 or x.shape[0] == 0:
        return quantize(slice(None))
    step = max(1, budget // x[0].numel())
    return torch.cat([quantize(slice(n, n + step)) for n in range(0, x.shape[0], step)])


def output_mse(Xq: torch.Tensor, Wq: torch.Tensor, X: torch.Tensor, W: torch.Tensor) -> float:
    """``‖Xq Wqᵀ − X Wᵀ‖² / (T·N)``, computed directly in float64 (a reference, not for searching)."""
    return float((Xq.double() @ Wq.double().T - X.double() @ W.double().T).square().mean())


def grid_search(
    grid: torch.Tensor,
    extras: torch.Tensor,
    evaluate: Callable[[torch.Tensor], torch.Tensor],
    stride: int,
    exact: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    keep: int = 3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per column, the candidate of least error and that error.

    ``grid`` [k, C] holds each column's ordered candidates, ``extras`` [e, C] more candidates
    (listed first, so they win ties; ``extras[0]`` is the current choice); ``evaluate`` maps
    [n, C] biases to [n, C] errors. With ``stride > 1`` only every ``stride``-th grid point
    (and the last) is evaluated; then, around each column's best grid point so far, the
    points at multiples of a step about a third of the remaining window, down to step 1
    (stride 9: 12 + 4 + 4 points, not 100). With ``exact``, ``evaluate`` is a cheap proxy:
    each column's ``keep`` best candidates by the proxy and ``extras[0]`` are evaluated with
    ``exact``, which picks the winner, and the errors returned are exact ones.
    """
    candidates, errors = _evaluate_grid(grid, extras, evaluate, stride)
    if exact is not None:
        order = errors.argsort(dim=0, stable=True)[:keep]
        candidates = torch.cat([extras[:1], candidates.gather(0, order)])
        errors = exact(candidates)
    best = errors.argmin(0, keepdim=True)
    return candidates.gather(0, best)[0], errors.gather(0, best)[0]


def _evaluate_grid(
    grid: torch.Tensor, extras: torch.Tensor, evaluate: Callable[[torch.Tensor], torch.Tensor], stride: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every candidate :func:`grid_search` evaluates, [n, C], and its error, [n, C]."""
    k, e = grid.shape[0], extras.shape[0]
    coarse = torch.arange(0, k, stride)
    if int(coarse[-1]) != k - 1:
        coarse = torch.cat([coarse, torch.tensor([k - 1])])
    candidates = torch.cat([extras, grid[coarse]])
    errors = evaluate(candidates)
    grid_error, at = errors[e:].min(0)
    center = coarse[at]
    window = stride - 1
    while window > 0:
        step = (window + 2) // 3
        half = torch.arange(step, window + 1, step)
        index = (center[None, :] + torch.cat([-half, half])[:, None]).clamp(0, k - 1)
        fine = grid.gather(0, index)
        fine_errors = evaluate(fine)
        candidates, errors = torch.cat([candidates, fine]), torch.cat([errors, fine_errors])
        fine_error, at = fine_errors.min(0)
        better = fine_error < grid_error
        center = torch.where(better, index.gather(0, at[None])[0], center)
        grid_error = torch.minimum(fine_error, grid_error)
        window = step - 1
    return candidates, errors


def _blocks(candidates: int, rows: int, width: int, budget: int) -> Iterator[Tuple[slice, int, int]]:
    """``(candidate slice, first row, end row)`` blocks of about ``budget`` quantized values.

    Rows are independent in both objectives, so a candidate larger than the budget is cut
    into row blocks and smaller ones are grouped. Blocks of ~2^18 values keep the quantizer's
    temporaries in cache, which is several times faster than quantizing whole tensors.
    """
    per_row = max(1, budget // width)
    if rows > per_row:
        for c in range(candidates):
            for n in range(0, rows, per_row):
                yield slice(c, c + 1), n, min(rows, n + per_row)
    else:
        group = max(1, budget // (rows * width))
        for c in range(0, candidates, group):
            yield slice(c, c + group), 0, rows


class WeightObjective:
    """Per-channel output error ``‖Xq Q(w_n; b̃_n)ᵀ − X w_nᵀ‖²`` of weight-bias candidates.

    The activation is held at ``Xq``. Calling it with ``(fmt, biases)``, ``biases`` [n, N],
    gives the [n, N] errors: candidate ``i`` of every channel in one batched computation.
    The quadratic term is ``dᵀGd`` (cost ``K²`` per channel, after ``T·K²`` to build ``G``)
    when ``T > K``, else ``‖Xq d‖²`` (cost ``T·K``). :meth:`proxy`
    keeps only the diagonal of ``G`` (``Σ_j G_jj d_j²``, cost ``K``): quantization errors of
    different inputs are nearly uncorrelated, so it ranks candidates almost as the exact
    error does, for the price of quantizing them.
    """

    def __init__(self, W: torch.Tensor, X: torch.Tensor, Xq: torch.Tensor, chunk_elements: int = 1 << 18) -> None:
        self.W = W
        (N, K), T = W.shape, X.shape[0]
        delta = Xq - X
        self.diag = Xq.square().sum(0)
        self.use_gram = T > K
        self.factor = Xq.T @ Xq if self.use_gram else Xq.T
        if T * K + N * K < N * T:  # through K×K products, else through [N, T] ones
            self.cross = W @ (delta.T @ Xq)
            self.const = ((W @ (delta.T @ delta)) * W).sum(1)
        else:
            WD = W @ delta.T
            self.cross = WD @ Xq
            self.const = WD.square().sum(1)
        self.chunk_elements = chunk_elements

    def __call__(self, fmt: FloatFormat, biases: torch.Tensor) -> torch.Tensor:
        return self._errors(fmt, biases, self._quadratic)

    def proxy(self, fmt: FloatFormat, biases: torch.Tensor) -> torch.Tensor:
        """The errors with ``G`` replaced by its diagonal (see the class docstring)."""
        return self._errors(fmt, biases, lambda D: (D.square() * self.diag).sum(-1))

    def _quadratic(self, D: torch.Tensor) -> torch.Tensor:
        P = D @ self.factor
        return (P * D).sum(-1) if self.use_gram else P.square().sum(-1)

    def _errors(
        self, fmt: FloatFormat, biases: torch.Tensor, quadratic: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        N, K = self.W.shape
        errors = torch.empty(biases.shape, dtype=torch.float32)
        for c, n, m in _blocks(biases.shape[0], N, K, self.chunk_elements):
            W = self.W[n:m]
            scale = fmt.scale_for_bias(biases[c, n:m]).unsqueeze(-1)
            D = fmt.quantize(W.expand(scale.shape[0], m - n, K), scale, validate=False) - W
            errors[c, n:m] = quadratic(D) + 2 * (D * self.cross[n:m]).sum(-1) + self.const[n:m]
        return errors


class ActObjective:
    """Summed output error ``‖Q(Xs; b̃) Weffᵀ − X Wᵀ‖²`` of activation-bias candidates ``b̃``.

    ``Wq`` is the quantized weight, held fixed. The activation quantized is ``Xs`` (default
    ``X``) and the weight it meets is ``Weff`` (default ``Wq``), with ``Xs Weffᵀ = X Wqᵀ``
    (pre-shifted: ``Xs = X·2^k``, ``Weff = Wq·2^−k``), so ``E = X (Wq − W)ᵀ`` is the error
    of the weight alone. Calling it with ``(fmt, biases)`` gives one error per bias;
    :meth:`proxy` keeps only the diagonal of ``A = WeffᵀWeff`` (as ``WeightObjective.proxy``).
    """

    def __init__(
        self, W: torch.Tensor, Wq: torch.Tensor, X: torch.Tensor, Xs: Optional[torch.Tensor] = None,
        Weff: Optional[torch.Tensor] = None, chunk_elements: int = 1 << 18,
    ) -> None:
        Xs = X if Xs is None else Xs
        Weff = Wq if Weff is None else Weff
        N, K = W.shape
        D = Wq - W
        self.diag = Weff.square().sum(0)
        self.use_gram = N > K
        if self.use_gram:
            self.factor = Weff.T @ Weff
            self.cross = X @ (D.T @ Weff)
            self.const = ((X @ (D.T @ D)) * X).sum(1)
        else:
            self.factor = Weff.T
            E = X @ D.T
            self.cross = E @ Weff
            self.const = E.square().sum(1)
        self.Xs = Xs
        self.chunk_elements = chunk_elements

    def rows(self, index: Optional[torch.Tensor]) -> "ActObjective":
        """The same objective over the rows ``index`` of ``X`` only (``None``: all rows)."""
        if index is None:
            return self
        sub = copy.copy(self)
        sub.Xs, sub.cross, sub.const = self.Xs[index], self.cross[index], self.const[index]
        return sub

    def __call__(self, fmt: FloatFormat, biases: torch.Tensor) -> torch.Tensor:
        return self._errors(fmt, biases, self._quadratic)

    def proxy(self, fmt: FloatFormat, biases: torch.Tensor) -> torch.Tensor:
        """The errors with ``A`` replaced by its diagonal."""
        return self._errors(fmt, biases, lambda delta: (delta.square() * self.diag).sum((1, 2)))

    def _quadratic(self, delta: torch.Tensor) -> torch.Tensor:
        P = delta @ self.factor
        return (P * delta).sum((1, 2)) if self.use_gram else P.square().sum((1, 2))

    def _errors(
        self, fmt: FloatFormat, biases: torch.Tensor, quadratic: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        T, K = self.Xs.shape
        flat = biases.reshape(-1)
        errors = torch.full(flat.shape, float(self.const.double().sum()), dtype=torch.float64)
        for c, n, m in _blocks(flat.numel(), T, K, self.chunk_elements):
            Xs = self.Xs[n:m]
            scale = fmt.scale_for_bias(flat[c]).reshape(-1, 1, 1)
            delta = fmt.quantize(Xs.expand(scale.shape[0], m - n, K), scale, validate=False) - Xs
            errors[c] += (quadratic(delta) + 2 * (delta * self.cross[n:m]).sum((1, 2))).double()
        return errors.reshape(biases.shape)


def search_weight_bias(
    objective: WeightObjective,
    fmt: FloatFormat,
    current: torch.Tensor,
    grid: str = "bias",
    k: int = 100,
    stride: int = 9,
    exact_top: Optional[int] = 3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per output channel, the bias of least output error, and that error ([N] each).

    The candidates are ``k`` grid points from the channel's max, its MinMax bias and its
    ``current`` bias [N] (which wins ties, so the error never rises). With ``exact_top`` the
    grid is ranked by :meth:`WeightObjective.proxy` and only each channel's ``exact_top``
    best and its current bias get the exact error; ``None`` evaluates every candidate exactly.
    """
    w_max = objective.W.abs().amax(1).double().clamp_min(_TINY)
    extras = torch.stack([current.to(torch.float64), fmt.bias_for_max(w_max)])
    candidates = bias_candidates(fmt, w_max, grid, k)
    exact = lambda b: objective(fmt, b)  # noqa: E731
    if exact_top is None:
        return grid_search(candidates, extras, exact, stride)
    return grid_search(candidates, extras, lambda b: objective.proxy(fmt, b), stride, exact, exact_top)


def sample_rows(T: int, screen_tokens: Optional[int]) -> Optional[torch.Tensor]:
    """A fixed random subset of ``screen_tokens`` of ``T`` rows, or ``None`` for all of them."""
    if screen_tokens is None or T <= screen_tokens:
        return None
    return torch.randperm(T, generator=torch.Generator().manual_seed(_SEED))[:screen_tokens]


def search_act_bias(
    objective: ActObjective,
    fmt: FloatFormat,
    grid: torch.Tensor,
    extras: torch.Tensor,
    current_error: Optional[float] = None,
    screen_tokens: Optional[int] = 512,
    stride: int = 9,
    exact_top: Optional[int] = 3,
) -> Tuple[torch.Tensor, float]:
    """The per-tensor activation bias among ``grid`` [k] and ``extras`` [e] of least output error.

    ``extras[0]`` is the current bias, of summed error ``current_error`` when known.
    Candidates are screened on ``screen_tokens`` rows drawn with a fixed seed (``None``: all
    rows), ranked by :meth:`ActObjective.proxy` when ``exact_top`` is set (the ``exact_top``
    best then get the exact error on those rows); the winner replaces the current bias only
    if it is better on all rows. Returns the bias ([1] float64) and its summed squared output
    error over all rows.
    """
    rows = sample_rows(objective.Xs.shape[0], screen_tokens)
    screen = objective.rows(rows)
    exact = lambda b: screen(fmt, b)  # noqa: E731
    if exact_top is None:
        best, error = grid_search(grid[:, None], extras[:, None], exact, stride)
    else:
        proxy = lambda b: screen.proxy(fmt, b)  # noqa: E731
        best, error = grid_search(grid[:, None], extras[:, None], proxy, stride, exact, exact_top)
    current = extras[:1]
    if rows is None:
        return best, float(error)
    if torch.equal(best, current) and current_error is not None:
        return current, current_error
    if current_error is None:
        current_error = float(objective(fmt, current))
    best_error = float(objective(fmt, best))
    return (best, best_error) if best_error < current_error else (current, current_error)


def weight_format_step(
    objective: WeightObjective, fmts: Sequence[FloatFormat], current: int, bias: torch.Tensor, error: float
) -> Tuple[int, torch.Tensor, float]:
    """Try every format other than ``fmts[current]``; return ``(format index, biases, error)``.

    Each format is tried at two biases per channel, the current range re-expressed in it and
    its own MinMax bias (the better of the two per channel); a format wins only if its summed
    error is below ``error`` (that of the current choice), else the current choice comes back.
    """
    w_range = max_for_bias(fmts[current], bias)
    w_max = objective.W.abs().amax(1).double().clamp_min(_TINY)
    for i, f in enumerate(fmts):
        if i == current:
            continue
        options = torch.stack([f.bias_for_max(w_range), f.bias_for_max(w_max)])
        errors = objective(f, options)
        pick = errors.argmin(0, keepdim=True)
        total = float(errors.gather(0, pick).double().sum())
        if total < error:
            current, bias, error = i, options.gather(0, pick)[0], total
    return current, bias, error


def refine_weights(
    W: torch.Tensor,
    X: torch.Tensor,
    Xq: torch.Tensor,
    weight_formats: Sequence[str],
    weight_format: str,
    weight_bias: torch.Tensor,
    grid: str = "clip",
    k: int = 100,
    stride: int = 9,
    exact_top: Optional[int] = 3,
) -> Tuple[str, torch.Tensor, float]:
    """One weight-bias step and one weight-format step against a fixed quantized input ``Xq``.

    For a weight first searched against another activation quantization (e.g. before the
    activation got its pre-shift): returns ``(format, biases [N], output MSE)``, never worse
    than ``(weight_format, weight_bias)``.
    """
    W, X = _check_layer(W, X)
    fmts = [float_format(n) for n in weight_formats]
    if weight_format not in weight_formats:
        raise ValueError(f"weight_format {weight_format!r} is not among {list(weight_formats)}")
    wi = list(weight_formats).index(weight_format)
    objective = WeightObjective(W, X, Xq.detach().to(torch.float32))
    bias, errors = search_weight_bias(objective, fmts[wi], weight_bias, grid, k, stride, exact_top)
    wi, bias, error = weight_format_step(objective, fmts, wi, bias, float(errors.double().sum()))
    return weight_formats[wi], bias, error / float(X.shape[0] * W.shape[0])


class _Cached(Generic[V]):
    """The last value built by ``build``, built again when the key changes."""

    def __init__(self, build: Callable[[], V]) -> None:
        self.build = build
        self.key: object = None
        self.built = False
        self.value: V

    def get(self, key: object) -> V:
        if not self.built or key != self.key:
            self.key, self.value, self.built = key, self.build(), True
        return self.value


@dataclass
class LayerSearchResult:
    """What :func:`search_layer` chose for one layer, and the output MSE after every step."""

    weight_format: str
    #: [N] float64, the real exponent bias of each output channel.
    weight_bias: torch.Tensor
    act_format: Optional[str]
    act_bias: Optional[float]
    mse: float
    #: ``(step, mse)`` from ``("minmax", …)`` through every step of every round.
    history: List[Tuple[str, float]] = field(default_factory=list)

    def quantize_weight(self, W: torch.Tensor) -> torch.Tensor:
        return quantize_rows(float_format(self.weight_format), W, self.weight_bias)

    def quantize_act(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` quantized as chosen (unchanged for a weight-only search)."""
        if self.act_format is None or self.act_bias is None:
            return X
        return quantize_tensor(float_format(self.act_format), X, self.act_bias)


def _check_layer(W: torch.Tensor, X: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if W.dim() != 2 or X.dim() != 2 or W.shape[1] != X.shape[1]:
        raise ValueError(f"expected W [N, K] and X [T, K]; got W {tuple(W.shape)} and X {tuple(X.shape)}")
    if X.shape[0] == 0 or W.shape[0] == 0:
        raise ValueError("the search needs at least one token and one output channel")
    for name, t in (("W", W), ("X", X)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"the search got NaN/Inf values in {name}")
    return W.detach().to(torch.float32), X.detach().to(torch.float32)


def _formats(names: Sequence[str], bits: int, what: str) -> List[FloatFormat]:
    fmts = [float_format(n) for n in names]
    if not fmts:
        raise ValueError(f"no {what} format candidates")
    for fmt in fmts:
        if fmt.bits != bits:
            raise ValueError(f"{what} format {fmt.name} has {fmt.bits} bits, expected {bits}")
    return fmts


def search_layer(
    W: torch.Tensor,
    X: torch.Tensor,
    bits_w: int,
    bits_a: Optional[int],
    rounds: int = 3,
    grid: str = "bias",
    k: int = 100,
    weight_formats: Optional[Sequence[str]] = None,
    act_formats: Optional[Sequence[str]] = None,
    act_max: Optional[float] = None,
    screen_tokens: Optional[int] = 512,
    stride: int = 9,
    chunk_elements: int = 1 << 18,
    exact_top: Optional[int] = 3,
) -> LayerSearchResult:
    """Search the formats and exponent biases of ``W`` [N, K] and of its input ``X`` [T, K].

    ``bits_a=None`` searches the weight alone (``X`` stays float). The search starts from
    the first format of each list (default :func:`default_formats`) at MinMax biases;
    ``act_max`` is the activation range for that start and for the grid (default ``max |X|``;
    pass the calibration absmax, since ``X`` is a sample). ``k`` is the number of grid points,
    ``stride`` the coarse-to-fine step (1: exhaustive), ``screen_tokens`` the rows that screen
    activation candidates (the winner is confirmed on all rows; ``None``: no screening),
    ``chunk_elements`` the most values quantized at once, and ``exact_top`` how many of the
    candidates ranked by the diagonal proxies get the exact error (``None``: all of them, as
    the paper's search does; see :func:`search_weight_bias`, :func:`search_act_bias`).
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if rounds < 0 or stride < 1:
        raise ValueError(f"need rounds >= 0 and stride >= 1, got rounds={rounds}, stride={stride}")
    W, X = _check_layer(W, X)
    T, N = X.shape[0], W.shape[0]
    norm = float(T * N)
    w_names = list(weight_formats or default_formats(bits_w))
    w_fmt = _formats(w_names, bits_w, "weight")
    w_max = W.abs().amax(1).double().clamp_min(_TINY)
    wi = 0
    w_bias = w_fmt[0].bias_for_max(w_max)
    Wq = quantize_rows(w_fmt[0], W, w_bias)

    quant_act = bits_a is not None
    a_names = list(act_formats or default_formats(bits_a)) if bits_a is not None else []
    a_fmt = _formats(a_names, bits_a, "activation") if bits_a is not None else []
    ai = 0
    a_range = torch.tensor(float(X.abs().max()) if act_max is None else float(act_max), dtype=torch.float64)
    a_range = a_range.clamp_min(_TINY)
    a_bias = a_fmt[0].bias_for_max(a_range).reshape(1) if quant_act else torch.zeros(1, dtype=torch.float64)
    Xq = quantize_tensor(a_fmt[0], X, a_bias) if quant_act else X
    screen_rows = sample_rows(T, screen_tokens)
    # Versions count changes of Wq and Xq; each objective depends on the other side only.
    w_version = a_version = 0
    weight_objective = _Cached(lambda: WeightObjective(W, X, Xq, chunk_elements))
    act_objective = _Cached(lambda: ActObjective(W, Wq, X, chunk_elements=chunk_elements))

    # Invariant: ``error`` is the summed output error of the current (Wq, Xq).
    error = float(weight_objective.get(a_version)(w_fmt[0], w_bias[None]).double().sum())
    history = [("minmax", error / norm)]
    w_done: Optional[Tuple[int, int]] = None
    a_done: Optional[Tuple[int, int]] = None
    for r in range(1, rounds + 1):
        if w_done != (a_version, w_version):
            fmt = w_fmt[wi]
            best, errors = search_weight_bias(weight_objective.get(a_version), fmt, w_bias, grid, k, stride, exact_top)
            if not torch.equal(best, w_bias):
                w_bias, w_version = best, w_version + 1
                Wq = quantize_rows(fmt, W, w_bias)
            error = float(errors.double().sum())
            w_done = (a_version, w_version)
        history.append((f"round {r}: weight bias", error / norm))

        if quant_act:
            if a_done != (w_version, a_version):
                fmt = a_fmt[ai]
                extras = torch.cat([a_bias, fmt.bias_for_max(a_range)[None]])
                best, error = search_act_bias(
                    act_objective.get(w_version), fmt, bias_candidates(fmt, a_range, grid, k), extras, error,
                    screen_tokens, stride, exact_top,
                )
                if not torch.equal(best, a_bias):
                    a_bias, a_version = best, a_version + 1
                    Xq = quantize_tensor(fmt, X, a_bias)
                a_done = (w_version, a_version)
            history.append((f"round {r}: act bias", error / norm))

        if len(w_fmt) > 1:
            chosen, w_bias, error = weight_format_step(weight_objective.get(a_version), w_fmt, wi, w_bias, error)
            if chosen != wi:
                wi, w_version = chosen, w_version + 1
                Wq = quantize_rows(w_fmt[wi], W, w_bias)
            history.append((f"round {r}: weight format", error / norm))

        if quant_act and len(a_fmt) > 1:
            objective = act_objective.get(w_version)
            screen = objective.rows(screen_rows)
            a_now = max_for_bias(a_fmt[ai], a_bias)
            options = [(ai, a_bias)] + [
                (i, b.reshape(1)) for i, f in enumerate(a_fmt) if i != ai
                for b in (f.bias_for_max(a_now), f.bias_for_max(a_range))
            ]
            screened = [float(screen(a_fmt[i], b)) for i, b in options]
            j = min(range(len(options)), key=lambda j: screened[j])
            if j:
                i, b = options[j]
                total = screened[j] if screen_rows is None else float(objective(a_fmt[i], b))
                if total < error:
                    ai, a_bias, a_version, error = i, b, a_version + 1, total
                    Xq = quantize_tensor(a_fmt[ai], X, a_bias)
            history.append((f"round {r}: act format", error / norm))

    return LayerSearchResult(
        weight_format=w_names[wi],
        weight_bias=w_bias,
        act_format=a_names[ai] if quant_act else None,
        act_bias=float(a_bias) if quant_act else None,
        mse=error / norm,
        history=history,
    )
