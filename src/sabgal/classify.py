"""Per-cell calls and per-image fractions.

* **SA-β-gal positive**: the cell's X-gal score (by default
  ``xgal_od_perinuclear_p60``, the 60th percentile of X-gal OD over a band
  around the nucleus, where lysosomal SA-β-gal gathers and a faint stain is
  densest, or over the cell's core cytoplasm in plain brightfield, where
  nuclei are guesses: robust to pixel noise, to the neighbours' stain
  spilling over an imperfect border, and to stray crystals) is above a
  threshold. The threshold is fixed in the config, learnt from negative
  control wells (batch), or learnt from the cells themselves: per image,
  just above the image's own unstained cells
  (:func:`negative_anchored_threshold`); for the set, a clear two-population
  split in log-OD (:func:`learn_positive_threshold`) or the median of the
  images' anchored thresholds. Never below a floor.
* **Enlarged**: cell area above ``enlarged_factor`` x the median area of the
  SA-β-gal-negative cells of the same image (magnification differs between
  images), or a fixed area.
* **Senescent**: a documented rule combining both (default: positive *and*
  enlarged).

Functions take and return tables; nothing here reads files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from sabgal.config import ClassifyConfig

__all__ = [
    "Thresholds",
    "learn_positive_threshold",
    "learn_thresholds",
    "negative_anchored_threshold",
    "image_thresholds",
    "classify_cells",
    "enlarged_reference",
    "summarize",
    "SUMMARY_COLUMNS",
    "SENESCENT_RULES",
]

SENESCENT_RULES = {
    "positive_and_enlarged": lambda pos, enl: pos & enl,
    "positive": lambda pos, enl: pos,
    "positive_or_enlarged": lambda pos, enl: pos | enl,
}

SUMMARY_COLUMNS = [
    "n_cells",
    "n_sabgal_positive",
    "fraction_sabgal_positive",
    "n_enlarged",
    "fraction_enlarged",
    "n_senescent",
    "fraction_senescent",
]


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a set of calls was made with (recorded in the outputs).

    positive: X-gal score threshold (OD) on column ``measure``.
    positive_source: "config", "learnt", "default" (no two populations),
      or "controls".
    enlarged_factor / enlarged_area_px / enlarged_area_um2: the area rule.
    """

    positive: float
    positive_source: str
    measure: str
    enlarged_factor: float
    enlarged_area_px: float | None = None
    enlarged_area_um2: float | None = None
    enlarged_source: str = "per-image negative median"

    def to_dict(self) -> dict:
        return asdict(self)


def _gmm2(x: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic two-component 1-D Gaussian mixture by EM."""
    lo, hi = np.percentile(x, [10, 90])
    mu = np.array([lo, hi], dtype=np.float64)
    sd = np.full(2, max(np.std(x) / 2, 1e-3))
    w = np.array([0.5, 0.5])
    for _ in range(iterations):
        d = np.stack([w[k] * np.exp(-0.5 * ((x - mu[k]) / sd[k]) ** 2) / sd[k] for k in range(2)])
        tot = d.sum(axis=0) + 1e-300
        r = d / tot
        nk = r.sum(axis=1) + 1e-12
        new_mu = (r * x).sum(axis=1) / nk
        new_sd = np.sqrt((r * (x - new_mu[:, None]) ** 2).sum(axis=1) / nk)
        new_sd = np.maximum(new_sd, 0.02)
        w = nk / nk.sum()
        if np.allclose(new_mu, mu, atol=1e-7) and np.allclose(new_sd, sd, atol=1e-7):
            mu, sd = new_mu, new_sd
            break
        mu, sd = new_mu, new_sd
    order = np.argsort(mu)
    return mu[order], sd[order], w[order]


def _log_scores(s: np.ndarray) -> np.ndarray:
    # log10 with a soft floor: noise around 0 OD collapses onto one mode
    return np.log10(np.clip(s, 0, None) + 0.02)


def _kde(x: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    """Unnormalised Gaussian kernel density of ``x`` on ``grid``."""
    return np.exp(-0.5 * ((grid[:, None] - x[None, :]) / bw) ** 2).sum(axis=1)


def _valley_ok(x: np.ndarray, cut: float, max_ratio: float = 0.6) -> bool:
    """True when the density at ``cut`` is a real valley between two peaks."""
    sd = float(np.std(x))
    if sd <= 0:
        return False
    bw = 0.9 * min(sd, float(np.subtract(*np.percentile(x, [75, 25]))) / 1.34 or sd) * x.size ** -0.2
    grid = np.linspace(x.min(), x.max(), 256)
    dens = _kde(x, grid, bw)
    at = np.interp(cut, grid, dens)
    left, right = dens[grid < cut], dens[grid > cut]
    if left.size == 0 or right.size == 0:
        return False
    return at < max_ratio * min(left.max(), right.max())


def _local_maxima(dens: np.ndarray) -> np.ndarray:
    """Interior grid indices where a density peaks (plateaus at their right end)."""
    return np.flatnonzero((dens[1:-1] >= dens[:-2]) & (dens[1:-1] > dens[2:])) + 1


def _second_difference(dens: np.ndarray) -> np.ndarray:
    """A density's second difference (0 at both ends): negative where it
    bends down (:func:`_modes_and_shoulders`)."""
    d2 = np.zeros_like(dens)
    d2[1:-1] = dens[2:] - 2 * dens[1:-1] + dens[:-2]
    return d2


def _modes_and_shoulders(dens: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Grid indices of a density's populations, lowest first: its local
    maxima, and its shoulders -- a concave stretch (a bump of its own) on
    the slope of a bigger population, where a small population's peak is
    swallowed by its neighbour's kernel (a few unstained cells below a
    field of stained ones). A shoulder is placed where the density bends
    down most (``d2``: the density's second difference)."""
    peaks = _local_maxima(dens)
    concave = d2 < 0
    edges = np.flatnonzero(np.diff(concave.astype(np.int8)))
    starts = np.r_[0, edges + 1] if concave[0] else edges[~concave[edges]] + 1
    out = list(peaks)
    for a in starts:
        b = a
        while b < dens.size and concave[b]:
            b += 1
        if not np.any((peaks >= a) & (peaks < b)):
            out.append(a + int(np.argmin(d2[a:b])))
    return np.array(sorted(out), dtype=np.intp)


def _populations(x: np.ndarray, grid: np.ndarray, dens: np.ndarray, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """The score density's populations, lowest first: (grid index of each
    one's mode, cells it holds).

    Candidates are the density's peaks and shoulders. Neighbouring
    candidates at most 3 bandwidths apart with no real dip between them (the
    valley above 60 % of the lower one) are one population split by
    sampling noise (a few dozen unstained cells whose noise is wider than
    the kernel show as two or three small peaks and shoulders); its mode is
    its highest candidate. A population holds the cells of its basin: up to
    the density's lowest point between it and the next population, or,
    where the density has no dip there (a shoulder), up to where it bends up
    most (its most convex point).
    """
    d2 = _second_difference(dens)
    cand = _modes_and_shoulders(dens, d2)
    step = float(grid[1] - grid[0]) if grid.size > 1 else 1.0
    groups: list[list[int]] = []
    for k in cand:
        if groups:
            j = groups[-1][-1]
            if (k - j) * step <= 3 * bw and dens[j:k + 1].min() >= 0.6 * min(dens[j], dens[k]):
                groups[-1].append(int(k))
                continue
        groups.append([int(k)])
    bounds = [0]
    for g, h in zip(groups[:-1], groups[1:]):
        j, k = g[-1], h[0]
        seg = dens[j:k + 1]
        m = int(np.argmin(seg))
        bounds.append(j + m if 0 < m < seg.size - 1 else j + int(np.argmax(d2[j:k + 1])))
    bounds.append(dens.size - 1)
    edges = grid[bounds]
    held = np.histogram(x, bins=edges)[0] if len(groups) else np.zeros(0, int)
    modes = np.array([max(g, key=lambda i: dens[i]) for g in groups], dtype=np.intp)
    return modes, held


def learn_positive_threshold(scores, *, floor: float, default: float,
                             min_cells: int = 12) -> tuple[float, str]:
    """Learn the SA-β-gal positivity threshold from per-cell X-gal scores.

    Scores are taken as log10(score + 0.02 OD) (staining strength is
    multiplicative; the offset merges the noise around zero into one mode).
    A two-component Gaussian mixture is fitted; the split is accepted only
    if the components are well separated (Ashman's D >= 2, each holding
    >= 2 % of the cells) *and* the score density has a real valley there
    (below 60 % of the lower of the two peaks), so a single broad
    population is never cut in two. The threshold is where the weighted
    component densities cross, never below ``floor``. Without two
    populations ``default`` is returned.

    Returns
    -------
    threshold : float
    source : {"learnt", "default"}

    >>> rng = np.random.default_rng(0)
    >>> s = np.r_[rng.lognormal(np.log(0.01), 0.3, 300), rng.lognormal(np.log(0.5), 0.4, 100)]
    >>> t, src = learn_positive_threshold(s, floor=0.05, default=0.15)
    >>> src, 0.05 <= t < 0.3
    ('learnt', True)
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < min_cells:
        return max(default, floor), "default"
    x = _log_scores(s)
    mu, sd, w = _gmm2(x)
    ashman = np.sqrt(2) * abs(mu[1] - mu[0]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2)
    if ashman < 2.0 or w.min() < 0.02:
        return max(default, floor), "default"
    grid = np.linspace(mu[0], mu[1], 2001)
    d0 = w[0] * np.exp(-0.5 * ((grid - mu[0]) / sd[0]) ** 2) / sd[0]
    d1 = w[1] * np.exp(-0.5 * ((grid - mu[1]) / sd[1]) ** 2) / sd[1]
    cross = grid[np.argmax(d1 >= d0)] if np.any(d1 >= d0) else (mu[0] + mu[1]) / 2
    if not _valley_ok(x, cross):
        return max(default, floor), "default"
    return max(float(10 ** cross - 0.02), floor), "learnt"


# When an image shows its faint stained cells as a population apart from
# its unstained ones (a clear empty gap whose upper side is beyond the
# unstained noise, or the excess rule), the threshold may go down to this
# fraction of the positivity floor.
GAP_FLOOR_FRACTION = 0.5

# A demonstrably tight unstained population -- at least TIGHT_MIN_CELLS
# cells below its mode, their robust spread at most TIGHT_SPREAD_OD -- needs
# no absolute floor above its own margin (mode + 0.02 OD): the floor comes
# down to that margin, but not below TIGHT_FLOOR_FRACTION of itself. Its
# faint stained cells then start just above it (scores of -0.005 to 0.03 OD
# over unstained cells at -0.01 on the second renderer), where the floor had
# held the threshold over most of them.
TIGHT_SPREAD_OD = 0.002
TIGHT_MIN_CELLS = 10
TIGHT_FLOOR_FRACTION = 1 / 3
# ... and the floor comes down in proportion across the top TIGHT_RAMP of
# that spread: all the way at TIGHT_SPREAD_OD x (1 - TIGHT_RAMP), not at all
# at TIGHT_SPREAD_OD. (A step there moved a development field's threshold
# from 0.03 to 0.01 OD -- 0.6 to 4.6 pp -- when its unstained spread went
# from 0.0022 to 0.0020 with a change elsewhere in the pipeline; 40 of 240
# development fields lie within 25 % of that value.)
TIGHT_RAMP = 0.25

# Two unstained populations: clean cells at zero X-gal and a second, tight
# one under an X-gal-coloured haze, below the floor. The threshold belongs
# above both; the tight-population and excess rules would put it inside the
# second (a fresh field: 221 cells at ~0 OD, 116 at 0.018-0.022, 26 stained
# above 0.03 -- the threshold fell to 0.015 and 157 cells were called
# positive for 27). The second population must stand apart from the first:
# the density between them falls to at most this fraction of its peak.
SECOND_VALLEY_RATIO = 0.5

# The excess rule's faint stained cells must lie above the threshold it
# lowers to: a major population of scores (a density peak or shoulder at
# least this fraction of the highest) centred between the unstained mode's
# shoulder and that lowered threshold is a second component of the
# unstained cells -- a confluent field's spill gives many a skewed upper
# tail -- and keeps the threshold where it was. (A development field: a
# component at 0.009 OD, 0.45 of the highest density, held most of 224
# unstained cells the rule called positive; the noise peaks and the lower
# slope of a stained mode under which unstained cells were correctly
# separated stood at 0.01-0.16.)
EXCESS_MIN_DENSITY = 0.25

# ... and only in a field with clearly stained cells: at least 3 (and 2 %)
# this far (OD) above the threshold it would lower. A negative control whose
# haze reaches the floor (a fresh development field: 134 unstained cells, 38
# of them at 0.024-0.045 OD, none past 0.045) showed an "excess" of cells over
# the unstained tail, and the threshold came down to 0.015 -- 28 % positive.
EXCESS_STAINED_MARGIN_OD = 0.02


def negative_anchored_threshold(scores, *, floor: float, positive_like: float, k: float = 4.0,
                                min_cells: int = 15) -> tuple[float, str]:
    """Threshold just above the image's own unstained cells.

    Unstained cells form the lowest, tightest mode of the log-score
    distribution (their score is the X-gal noise floor plus any faint
    haze). The mode is found by a kernel density estimate (a minority of
    unstained cells that is only a shoulder of the stained mode, or a few
    noise peaks, counts when it sits below half the floor), its spread from
    the cells *below* it (which positives cannot contaminate), measured in
    OD (the noise of an unstained cell is additive), and the threshold is
    ``mode + k`` spreads (at least 0.02 OD above the mode), moved into the
    widest clear empty gap of the scores between the mode's shoulder
    (mode + 2 spreads) and 3x that threshold when there is one (haze and
    spill give unstained cells a longer upper tail than lower), and up to the
    bottom of a clear density dip between the threshold and the first
    stained mode above it when the tail ends in one; or, when neither
    applies and far more cells lie between the shoulder and the threshold
    than a Gaussian tail of the unstained cells would hold, down to where
    that tail holds half a cell (those cells are faintly stained) -- when
    the field has clearly stained cells (3, and 2 %, above the threshold)
    and no major population of the scores is centred below that lower
    threshold (:data:`EXCESS_MIN_DENSITY`: the unstained cells' own skewed
    tail). Never
    below ``floor``, or half of it where the gap or the excess rule shows the
    faint stained cells apart; a demonstrably tight unstained population
    (:data:`TIGHT_SPREAD_OD`) brings the floor down to its own margin, mode
    + 0.02 OD, but not below :data:`TIGHT_FLOOR_FRACTION` of it. If that lowest
    mode already looks stained (its score is above 0.6 x ``positive_like``, or
    it is broad: spread above half the floor) the image has no unstained
    population to anchor on and ``nan`` is returned with source ``"none"``
    -- except that when some cells read below zero the search is made first
    on a log scale starting at the 2nd percentile of the scores: unstained
    cells that all read below zero (a cytoplasm colour unmixing slightly
    negative onto X-gal) pile up at zero on a scale clipped there, and their
    offset below zero passes for spread. (Only when the cells below zero
    outnumber twice those as far above it, or those between zero and the
    floor: scores scattered across zero are not offset.) A population found
    on that scale counts only if it lies below zero (the floors stay as they
    are); otherwise the clipped scale is used.

    Stained cells are never all alike, unstained cells can be: a higher
    mode (below 0.6 x ``positive_like``) whose cells lie within
    :data:`TIGHT_SPREAD_OD` of it and outnumber the lowest mode's (and
    :data:`TIGHT_MIN_CELLS`) is the unstained population -- a uniform haze,
    or a cytoplasm colour close to X-gal's -- and the lowest mode is specks
    and false cells on glass at zero X-gal, which are not anchored on. (On
    a second renderer's field with a grey-navy X-gal, 39 unstained cells
    read 0.044-0.049 OD and 26 false ones 0-0.006: the threshold fell between
    the two, every unstained cell positive.)

    Unstained cells can also come as two populations: clean ones near zero
    and a second, tight, major one (:data:`TIGHT_SPREAD_OD`,
    :data:`EXCESS_MIN_DENSITY`) under an X-gal-coloured haze, above the
    first's shoulder and below the floor, apart from it
    (:data:`SECOND_VALLEY_RATIO`). The scores above the valley between them
    are then anchored on their own, so the threshold lands above both.

    >>> rng = np.random.default_rng(1)
    >>> s = np.r_[rng.normal(0.02, 0.005, 200), rng.uniform(0.1, 1.0, 60)]
    >>> t, src = negative_anchored_threshold(s, floor=0.03, positive_like=0.15)
    >>> src, 0.03 <= t < 0.1
    ('anchored', True)
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < min_cells:
        return float("nan"), "none"
    low = float(np.percentile(s, 2))
    n_neg = int(np.count_nonzero(s < 0))
    # just above zero, as far as the lowest scores lie below it
    mirror = int(np.count_nonzero((s >= 0) & (s < -low)))
    offset = n_neg > 2 * mirror or n_neg > np.count_nonzero((s >= 0) & (s < floor))
    if low < 0 and n_neg >= max(5, 0.03 * s.size) and offset:
        # Unstained cells can all read below zero X-gal (a cytoplasm colour
        # that unmixes slightly negative onto X-gal). On a log scale clipped
        # at zero they pile up there, and their distance below zero passes
        # for spread: the threshold lands well above them, over the faintly
        # stained cells. Looked at first on a scale starting at the lowest
        # scores, they keep their own place and spread. (Only when they are
        # offset below zero: more than twice as many cells below zero as
        # just above it, or more than between zero and the floor. The lowest
        # of unstained scores scattered across zero are not a population.)
        t, src = _anchor(s, low, floor=floor, positive_like=positive_like, k=k)
        if src == "anchored":
            return t, src
    t, src = _anchor(s, 0.0, floor=floor, positive_like=positive_like, k=k)
    return t, src


def _robust_spread(values: np.ndarray, centre: float) -> float:
    """Robust SD of ``values`` about ``centre``: 1.4826 x the median absolute
    deviation from it (the SD of a Gaussian)."""
    return float(np.median(np.abs(values - centre))) * 1.4826


def _anchor(s: np.ndarray, shift: float, *, floor: float, positive_like: float,
            k: float, nested: bool = False) -> tuple[float, str]:
    """:func:`negative_anchored_threshold` on a log scale starting at
    ``shift`` (<= 0) OD."""

    def fwd(v):
        return _log_scores(np.asarray(v, dtype=np.float64) - shift)

    def inv(v):
        return 10 ** v - 0.02 + shift

    x = fwd(s)
    # bandwidth from the lower half only (a mixture over-smooths Silverman's
    # rule), kept between 0.03 and 0.08 decades
    lower = np.sort(x)[: max(5, x.size // 2)]
    iqr = float(np.subtract(*np.percentile(lower, [75, 25])))
    bw = float(np.clip(0.9 * (iqr / 1.34) * lower.size ** -0.2, 0.03, 0.08))
    grid = np.linspace(x.min() - 3 * bw, x.max() + 3 * bw, 512)
    dens = _kde(x, grid, bw)
    peaks = _local_maxima(dens)
    # a mode counts if it holds a few cells, however small next to the stained ones
    near = np.array([np.sum(np.abs(x - grid[k]) <= bw) for k in peaks])
    peaks = peaks[(dens[peaks] >= 0.05 * dens.max()) & (near >= max(3, 0.03 * x.size))]
    # A minority of unstained cells under a stained majority can be no peak
    # of its own (a shoulder of the stained mode, or noise peaks too small
    # to count alone); a population found that way below the first peak
    # anchors instead, if it sits near zero X-gal (below half the floor)
    # where only unstained cells lie.
    minority, held = _populations(x, grid, dens, bw)
    keep = (dens[minority] >= 0.05 * dens.max()) & (held >= max(3, 0.03 * x.size))
    keep &= inv(grid[minority]) <= 0.5 * floor
    if peaks.size:
        keep &= minority < peaks[0]
    minority = minority[keep]
    first = int(minority[0]) if minority.size else (int(peaks[0]) if peaks.size else -1)
    # A tight population above the lowest, holding more cells, is the
    # unstained cells (uniform haze or a cytoplasm colour close to X-gal's
    # puts them all at one small positive score), and what lies below it is
    # not cells: specks and false cells on glass read zero X-gal.
    # Stained cells are never that alike.
    tight_above = False
    if first >= 0:
        n_first = int(np.count_nonzero(np.abs(x - grid[first]) <= 2 * bw))
        for pk in peaks[peaks > first]:
            level = float(inv(grid[pk]))
            members = s[np.abs(x - grid[pk]) <= 2 * bw]
            if level > 0.6 * positive_like or members.size <= max(n_first, TIGHT_MIN_CELLS):
                continue
            if _robust_spread(members, level) <= TIGHT_SPREAD_OD:
                first, tight_above = int(pk), True
                break
    if first < 0:
        return float("nan"), "none"
    mode = float(inv(grid[first]))  # back to OD: unstained scores scatter additively
    if mode > 0.6 * positive_like:
        return float("nan"), "none"
    below = s[s <= mode]
    if tight_above:
        # (its spread from its own cells, not the ones below it)
        below = below[np.abs(fwd(below) - grid[first]) <= 2 * bw]
    if below.size >= 5:
        spread = float(np.median(mode - below)) * 1.4826
    else:
        # few unstained cells (a mostly stained field): their spread from
        # the cells under the mode's kernel, both sides
        members = s[np.abs(x - grid[first]) <= 2 * bw]
        spread = _robust_spread(members, mode) if members.size >= 3 else 0.01
    # a demonstrably tight unstained population (TIGHT_SPREAD_OD), judged
    # before the quantisation minimum below
    # (how tight, from 1 to 0 across the top TIGHT_RAMP of TIGHT_SPREAD_OD:
    # the floor moves with the spread, not in one step at a borderline value)
    tightness = (float(np.clip((TIGHT_SPREAD_OD - spread) / (TIGHT_RAMP * TIGHT_SPREAD_OD), 0.0, 1.0))
                 if below.size >= TIGHT_MIN_CELLS else 0.0)
    tight = below.size >= TIGHT_MIN_CELLS and spread <= TIGHT_SPREAD_OD
    spread_seen = spread
    spread = max(spread, 0.003)
    if spread > 0.5 * max(floor, 0.01):
        # not a tight unstained population: the lowest mode is faintly
        # stained cells (unstained cells spread by noise and haze, < 0.01 OD)
        return float("nan"), "none"
    if shift < 0 and mode + 2 * (spread_seen if tight else spread) >= 0:
        # the second look is for unstained cells that all read below zero;
        # a tight-looking bottom of scores scattered across zero is not them
        # (a tight population's own spread measured, not the minimum)
        return float("nan"), "none"
    floor_abs = floor
    if tightness > 0:
        floor -= tightness * (floor - min(floor, max(mode + 0.02, TIGHT_FLOOR_FRACTION * floor)))
    t = max(mode + max(k * spread, 0.02), floor)
    t_base = t
    low_floor = floor
    shoulder = mode + 2 * spread
    if not nested:
        # A second unstained population above this one: a major, tight
        # population of scores between the shoulder and the floor, apart from
        # the lowest mode (a density valley at most half its peak between the
        # two) -- unstained cells under an X-gal-coloured haze beside clean
        # ones. The threshold goes above it: the scores above the valley are
        # anchored on their own (once), as if the lower population were not
        # there.
        for pk in peaks[peaks > first]:
            level = float(inv(grid[pk]))
            if not (max(shoulder, 0.0) < level < floor_abs) or dens[pk] < EXCESS_MIN_DENSITY * dens.max():
                continue
            v = first + int(np.argmin(dens[first: pk + 1]))
            if not (first < v < pk and dens[v] <= SECOND_VALLEY_RATIO * dens[pk]):
                continue
            members = s[np.abs(x - grid[pk]) <= bw]
            if members.size < TIGHT_MIN_CELLS or _robust_spread(members, level) > TIGHT_SPREAD_OD:
                continue
            t2, src2 = _anchor(s[x > grid[v]], shift, floor=floor_abs, positive_like=positive_like,
                               k=k, nested=True)
            if src2 == "anchored":
                return max(t2, float(inv(grid[v]))), "anchored"
    # Haze and spill give unstained cells a longer upper tail than lower: if
    # the scores from the unstained mode's shoulder (mode + 2 spreads) up to
    # 3x the anchor show a clear empty gap (>= 0.08 decade of log-score), the
    # boundary sits in the widest such gap instead. Gaps are measured within
    # that window: one that opens near its top and runs on past it is mostly
    # a gap between stained cells.
    xs = np.sort(x)
    gap_found = False
    lo, hi = fwd([shoulder, 3 * t])
    inside = xs[(xs >= lo) & (xs <= hi)]
    # the shoulder opens the first gap (the unstained cells may end below
    # it) and the first cell past the window closes the last
    pts = np.concatenate([[lo], inside, xs[xs > hi][:1]])
    if pts.size >= 2:
        gaps = np.diff(np.minimum(pts, hi))
        # a gap needs a population above it, not one stray bright cell
        n_above = xs.size - np.searchsorted(xs, pts[1:], side="left")
        gaps[n_above < max(3, 0.02 * xs.size)] = 0
        j = int(np.argmax(gaps))
        if gaps[j] >= 0.08:
            gap_found = True
            t = max(float(inv((pts[j] + min(pts[j + 1], hi)) / 2)), shoulder)
            if inv(min(pts[j + 1], hi)) >= mode + k * spread:
                # the cells above the gap are clear of the unstained cells'
                # noise: the image itself shows its faint stained cells as a
                # population apart, and the gap may sit below the floor
                low_floor = GAP_FLOOR_FRACTION * floor
    # Short of an empty gap, the unstained cells' upper tail can still end in
    # a clear dip of the density before the first stained mode above the
    # threshold: move up to the bottom of that dip when it is well below
    # both the density at the threshold and that stained mode, and what it
    # passes over is a tail (at most half as many cells as lie below the
    # threshold), not a population of faintly stained cells.
    lt = float(fwd([t])[0])
    above = peaks[grid[peaks] > lt]
    i0 = int(np.searchsorted(grid, lt))
    if not gap_found and above.size and i0 < above[0]:
        v = i0 + int(np.argmin(dens[i0: above[0] + 1]))
        passed = int(np.count_nonzero((x > lt) & (x <= grid[v])))
        if (dens[v] < 0.9 * dens[i0] and dens[v] < 0.5 * dens[above[0]]
                and passed <= 0.5 * np.count_nonzero(x <= lt)):
            t = max(float(inv(grid[v])), t)
    # Conversely, the k-spread margin assumes the unstained cells' upper tail
    # is no heavier than Gaussian. When, short of any gap or dip, the cells
    # between the shoulder and the threshold far outnumber what such a tail
    # holds (>= 3x + 3 cells), they are a population -- faintly stained cells
    # -- and the threshold comes down to where the unstained tail is expected
    # to hold half a cell (a Gaussian of the unstained mode's spread, its
    # size twice the cells below the mode).
    if t == t_base:
        from scipy.stats import norm

        n0 = 2 * int(np.count_nonzero(s <= mode))
        between = int(np.count_nonzero((s > shoulder) & (s <= t)))
        expected = n0 * (norm.sf(2.0) - norm.sf((t - mode) / spread))
        # (faintly stained cells come with clearly stained ones: in a field
        # with none clearly above the threshold -- a negative control -- the
        # cells past the shoulder are the unstained cells' own tail)
        stained = np.count_nonzero(s > t + EXCESS_STAINED_MARGIN_OD) >= max(3, 0.02 * s.size)
        if n0 >= 10 and stained and between >= max(3, 3 * expected + 3):
            z = float(norm.isf(0.5 / n0))
            lowered_floor = min(floor, GAP_FLOOR_FRACTION * floor_abs)
            lowered = max(mode + z * spread, shoulder, lowered_floor)
            # ... unless the excess has its centre below that lower
            # threshold: a major population (a peak or shoulder of the
            # density, EXCESS_MIN_DENSITY of its highest) between the
            # unstained mode's shoulder and the lowered threshold is a second
            # component of the unstained cells (spill, haze), which the lower
            # threshold would cut in two, not faintly stained cells above it
            cand = _modes_and_shoulders(dens, _second_difference(dens))
            lo_x, hi_x = fwd([shoulder, lowered])
            split = cand[(grid[cand] > lo_x) & (grid[cand] < hi_x) & (dens[cand] >= EXCESS_MIN_DENSITY * dens.max())]
            if not split.size:
                low_floor, t = lowered_floor, lowered
    return max(t, low_floor), "anchored"


def anchor_column(cells: pd.DataFrame, measure: str) -> str:
    """The column thresholds are learnt from for ``measure``: for the
    perinuclear score, ``xgal_od_anchor_p60`` when the table has it (the
    same score with a nuclear stain; in plain brightfield the core score of
    every cell, while cells with a sure nucleus are called on their band),
    else ``measure`` itself."""
    if measure == "xgal_od_perinuclear_p60" and "xgal_od_anchor_p60" in cells:
        return "xgal_od_anchor_p60"
    return measure


def image_thresholds(cells: pd.DataFrame, config: ClassifyConfig, fallback: float, *,
                     image_column: str = "image") -> dict[str, tuple[float, str]]:
    """Per-image positivity thresholds: staining strength, haze and noise
    differ between wells. The threshold is anchored just above the image's
    own unstained cells (:func:`negative_anchored_threshold`); an image with
    no tight unstained population (almost all cells stained, or too few
    cells) uses ``fallback``, the set's threshold. A per-image valley split
    is deliberately not used: stained cells span a decade of intensity and
    often look like two populations themselves."""
    out: dict[str, tuple[float, str]] = {}
    if image_column not in cells or not len(cells):
        return out
    measure = anchor_column(cells, config.positive_measure)
    for image, grp in cells.groupby(image_column, sort=False):
        if config.exclude_border_cells:
            grp = grp[~grp["touches_border"].astype(bool)]
        scores = grp[measure].to_numpy()
        t, src = negative_anchored_threshold(scores, floor=config.min_positive_threshold,
                                             positive_like=config.default_positive_threshold)
        out[image] = (t, "learnt per image") if src in ("learnt", "anchored") else (fallback, "set")
    return out


def learn_thresholds(cells: pd.DataFrame, config: ClassifyConfig) -> Thresholds:
    """Thresholds for a set of cells (one image or a whole run), from the config
    or learnt from the cells themselves."""
    measure = config.positive_measure
    learn = anchor_column(cells, measure)  # (cells are called on ``measure``)
    if config.positive_threshold == "auto":
        usable = cells
        if config.exclude_border_cells and "touches_border" in cells:
            usable = cells[~cells["touches_border"]]
        t, src = learn_positive_threshold(usable[learn].to_numpy() if len(usable) else [],
                                          floor=config.min_positive_threshold,
                                          default=config.default_positive_threshold)
        if src == "default" and "image" in usable and len(usable):
            # no two populations in the pooled scores: the typical threshold
            # anchored on the images' own unstained cells is the next best
            per = [negative_anchored_threshold(g[learn].to_numpy(), floor=config.min_positive_threshold,
                                               positive_like=config.default_positive_threshold)[0]
                   for _, g in usable.groupby("image", sort=False)]
            per = [v for v in per if np.isfinite(v)]
            if per:
                t, src = float(np.median(per)), "learnt (median of images)"
    else:
        t, src = float(config.positive_threshold), "config"
    if config.enlarged_threshold_um2 is not None:
        enl_src = "config (µm²)"
    elif config.enlarged_threshold_px is not None:
        enl_src = "config (px)"
    else:
        enl_src = "per-image negative median"
    return Thresholds(positive=t, positive_source=src, measure=measure,
                      enlarged_factor=config.enlarged_factor,
                      enlarged_area_px=config.enlarged_threshold_px,
                      enlarged_area_um2=config.enlarged_threshold_um2,
                      enlarged_source=enl_src)


def reference_area(cells: pd.DataFrame, positive: np.ndarray) -> float:
    """Median area (px) of the image's SA-β-gal negative cells (those not cut
    by the border when there are 8 or more), falling back to the smallest
    half of all cells when fewer than 3 are negative. A mostly stained field
    keeps its few negatives as the reference: the smallest half of its cells
    would be enlarged cells themselves."""
    area = cells["area_px"].to_numpy(dtype=np.float64)
    inner = ~cells["touches_border"].to_numpy(dtype=bool)
    neg = area[~positive & inner]
    if neg.size >= 8:
        return float(np.median(neg))
    neg = area[~positive]
    if neg.size >= 3:
        return float(np.median(neg))
    if area.size:
        return float(np.median(np.sort(area)[: max(1, area.size // 2)]))
    return float("nan")


def enlarged_reference(cells: pd.DataFrame, positive: np.ndarray, thresholds: Thresholds, *,
                       image_column: str | None = "image") -> np.ndarray | None:
    """Per cell, the area its image's ``enlarged_factor`` multiplies
    (:func:`reference_area` of that image's cells, with ``positive`` their
    calls); None when the thresholds fix an area instead (µm² when every
    cell has one, else px). What :func:`classify_cells` calls enlarged by,
    and what a run records per image."""
    if ((thresholds.enlarged_area_um2 is not None and cells["area_um2"].notna().all())
            or thresholds.enlarged_area_px is not None):
        return None
    ref = np.full(len(cells), np.nan)
    groups = (cells.groupby(image_column, sort=False).indices
              if image_column and image_column in cells else {None: np.arange(len(cells))})
    for idx in groups.values():
        ref[idx] = reference_area(cells.iloc[idx], positive[idx])
    return ref


def classify_cells(cells: pd.DataFrame, thresholds: Thresholds, *, rule: str = "positive_and_enlarged",
                   image_column: str | None = "image",
                   per_image: dict[str, tuple[float, str]] | None = None) -> pd.DataFrame:
    """Add ``sabgal_positive``, ``enlarged`` and ``senescent`` boolean columns.

    ``per_image`` maps an image to its own positivity threshold (see
    :func:`image_thresholds`); other images use ``thresholds.positive``.
    The enlarged reference is computed per image (column ``image_column``)
    unless the thresholds fix an area.
    """
    if rule not in SENESCENT_RULES:
        raise ValueError(f"senescent rule must be one of {sorted(SENESCENT_RULES)}, got {rule!r}")
    out = cells.copy()
    score = out[thresholds.measure].to_numpy(dtype=np.float64) if len(out) else np.zeros(0)
    cut = np.full(len(out), thresholds.positive)
    if per_image and image_column and image_column in out:
        cut = out[image_column].map(lambda k: per_image.get(k, (thresholds.positive,))[0]).to_numpy(dtype=np.float64)
    pos = np.nan_to_num(score, nan=0.0) > cut
    enl = np.zeros(len(out), dtype=bool)
    if len(out):
        ref = enlarged_reference(out, pos, thresholds, image_column=image_column)
        if ref is not None:
            enl = out["area_px"].to_numpy() > thresholds.enlarged_factor * ref
        elif thresholds.enlarged_area_um2 is not None and out["area_um2"].notna().all():
            enl = out["area_um2"].to_numpy() > thresholds.enlarged_area_um2
        else:
            enl = out["area_px"].to_numpy() > thresholds.enlarged_area_px
    out["sabgal_positive"] = pos
    out["enlarged"] = enl
    out["senescent"] = SENESCENT_RULES[rule](pos, enl)
    return out


def summarize(cells: pd.DataFrame, *, exclude_border: bool = False) -> dict[str, float]:
    """Counts and fractions for a classified table (one image or a group).

    Fractions over zero cells are NaN (with ``n_cells = 0``).

    >>> t = pd.DataFrame({"sabgal_positive": [True, False], "enlarged": [True, True],
    ...                   "senescent": [True, False], "touches_border": [False, False]})
    >>> summarize(t)["fraction_sabgal_positive"]
    0.5
    """
    if exclude_border and len(cells):
        cells = cells[~cells["touches_border"].astype(bool)]
    n = int(len(cells))
    out: dict[str, float] = {"n_cells": n}
    for col, name in (("sabgal_positive", "sabgal_positive"), ("enlarged", "enlarged"),
                      ("senescent", "senescent")):
        k = int(cells[col].sum()) if n else 0
        out[f"n_{name}"] = k
        out[f"fraction_{name}"] = k / n if n else float("nan")
    return out
