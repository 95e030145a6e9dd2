"""The method registry: one entry per fusion method, and the only way the package runs a method.

Each :class:`Method` entry knows the module function that prepares it on a scene (``prepare(source,
**options) -> Prediction``, see :mod:`stfusion.blocks`), its options (typed, validated, with defaults and
help), how many reference pairs it takes, whether it needs a trained checkpoint, and how it is cut into
blocks. The command line (``predict``, ``compare``, ``test``, ``benchmark``, ``methods``), the jobs in
:mod:`stfusion.workflows` and the Python API all go through :func:`get` and :meth:`Method.preparer`.

Adding a method is one entry in :data:`METHODS` plus its module::

    Method(
        name="mymethod",
        summary="What it does, in one line.",
        prepare="stfusion.baselines.mymethod:prepare",
        options=(Option("window", int, 31, "Window side in fine pixels.", minimum=3),),
        block="row blocks with a halo of window // 2 rows",
    )

Method modules are imported on first use (STARFM and FSDAF compile numba kernels).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from stfusion.blocks import Prediction, SceneSource
from stfusion.errors import InputError

if TYPE_CHECKING:  # imports torch: loaded by the MLFF-GAN paths only
    from stfusion.checkpoint import Checkpoint


class PairCountError(InputError):
    """A method cannot predict a case with this many reference pairs (e.g. ESTARFM with one)."""


#: A method bound to its options (and model), ready to prepare any scene.
Preparer = Callable[[SceneSource], Prediction]

#: The option of a :attr:`Method.fills_gaps` method that turns the filling off.
FILL_GAPS = "fill_gaps"

#: The method `stfusion predict` uses without --method or --checkpoint, and why.
DEFAULT_METHOD = "fsdaf"
DEFAULT_REASON = (
    "the leave-out benchmark's best mean RMSE with one reference pair: 0.0221 over its 14 one-pair cases of "
    "3 datasets, against 0.0239 for STARFM (starfm4py preset), which it beats in every one-pair case"
)
#: The method used with two reference pairs or more when none is given: the benchmark's best mean RMSE on
#: its two-pair cases (ESTARFM 0.0180, FSDAF pair by pair 0.0182, STARFM 0.0199 to 0.0241).
TWO_PAIR_DEFAULT = "estarfm"


@dataclass(frozen=True)
class Option:
    """One option of a method: name, type, default, one-line help and the values it accepts.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``default`` None means "chosen by the method"
    (from the data or the preset), and the help says how.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    default_text: str | None = None  # how the default reads in help, when not the value itself
    odd: bool = False  # an int that must be odd (a window side)

    def parse(self, value: Any, method: str) -> Any:
        """A value given as text (command line) or as a Python value, converted and checked."""
        where = f"method {method}: option {self.name}={value!r}"
        if value is None:
            return None
        if isinstance(value, str) and self.kind is not str:
            text = value.strip()
            if self.kind is bool:
                lowered = text.lower()
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise InputError(f"{where}: expected true or false")
                value = lowered in {"true", "1", "yes"}
            else:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise InputError(f"{where}: expected {self.kind.__name__}") from None
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            raise InputError(f"{where}: expected {self.kind.__name__}, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            raise InputError(f"{where}: choose one of {', '.join(self.choices)}")
        number = float(cast(float, value)) if self.kind in (int, float) else 0.0
        if self.minimum is not None and number < self.minimum:
            raise InputError(f"{where}: must be >= {self.minimum:g}")
        if self.maximum is not None and number > self.maximum:
            raise InputError(f"{where}: must be <= {self.maximum:g}")
        if self.odd and int(number) % 2 == 0:
            raise InputError(f"{where}: must be odd (a window centred on its pixel)")
        return value

    def describe(self) -> str:
        """One line for help texts: ``name (type, default X): help``."""
        default = self.default_text or ("auto" if self.default is None else json.dumps(self.default))
        values = f"; one of {', '.join(self.choices)}" if self.choices else ""
        return f"{self.name} ({self.kind.__name__}, default {default}{values}): {self.help}"


@dataclass(frozen=True)
class Method:
    """A registry entry (see the module docstring).

    Attributes:
        name: the name users type (``--method NAME``).
        summary: one line for ``stfusion methods`` and ``--help``.
        prepare: ``"module:function"``; the function is ``prepare(source, **options) -> Prediction``
            (with ``model=`` for checkpoint methods, see :attr:`load_model`).
        options: the options users may set, typed and documented.
        pairs: (fewest, most) reference pairs the method itself takes; None = any number. A method taking
            one pair is run once per pair when a case has several, and the predictions are combined
            (:mod:`stfusion.pairs`).
        needs_checkpoint: predicts with a trained model given by ``--checkpoint``.
        load_model: ``"module:function"`` loading a checkpoint once, ``load_model(checkpoint, **runtime)``.
        block: how the method is cut into blocks (for users and contributors).
        references: the method's publication.
        defaults: option values the tool uses when the user gives none (chosen by the benchmark), where
            they differ from the method module's own defaults (which follow its specification).
        fills_gaps: the method needs every reference pair valid at a pixel; the tool fills the pixels it
            leaves NaN where one pair is usable from :data:`DEFAULT_METHOD` run pair by pair
            (:class:`stfusion.pairs.GapFilledPrediction`), unless the user sets the option
            :data:`FILL_GAPS` (which the entry lists among its options) to false.
    """

    name: str
    summary: str
    prepare: str
    options: tuple[Option, ...] = ()
    pairs: tuple[int, int | None] = (1, 1)
    needs_checkpoint: bool = False
    load_model: str | None = None
    block: str = "row blocks, no halo (pixel by pixel)"
    references: str = ""
    defaults: tuple[tuple[str, Any], ...] = ()
    fills_gaps: bool = False

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        if not self.options:
            raise InputError(f"method {self.name} takes no options (got {name!r})")
        known = ", ".join(o.name for o in self.options)
        raise InputError(f"method {self.name}: unknown option {name!r}; its options are: {known}")

    def parse_options(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Options given by the user, converted and checked; unknown names are an InputError.

        Only the options given are returned (the method's own defaults apply to the others).
        """
        parsed: dict[str, Any] = {}
        for raw_name, value in (values or {}).items():
            name = raw_name.replace("-", "_")
            option = self.option(name)
            parsed[name] = option.parse(value, self.name)
        return parsed

    def gap_fill(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether this method, with these user options, has its gaps filled (:attr:`fills_gaps` and
        the option :data:`FILL_GAPS` not false)."""
        return self.fills_gaps and bool(self.parse_options(options).get(FILL_GAPS, True))

    def accepts_pairs(self, n_pairs: int) -> bool:
        """Whether the method can predict from ``n_pairs`` reference pairs (directly or pair by pair)."""
        fewest, most = self.pairs
        if n_pairs < fewest:
            return False
        return most is None or n_pairs <= most or most == 1

    def check_pairs(self, counts: Iterable[int], hint: str = "") -> None:
        """InputError unless the method can predict at least one of cases with ``counts`` reference
        pairs (a job would otherwise leave it out of every case); ``hint`` says how to give more."""
        counts = sorted(set(counts))
        if counts and not any(self.accepts_pairs(n) for n in counts):
            fewest, most = self.pairs
            needs = f"at least {fewest}" if most is None or most > fewest else f"{fewest}"
            have = " or ".join(map(str, counts))
            raise InputError(
                f"method {self.name} needs {needs} reference pairs, and every case here has {have}{hint}"
            )

    def check_checkpoint(self, given: bool) -> None:
        """InputError unless a checkpoint is ``given`` exactly when this method needs one."""
        if self.needs_checkpoint and not given:
            raise InputError(f"method {self.name} needs --checkpoint MODEL.ckpt (see `stfusion train`)")
        if given and not self.needs_checkpoint:
            raise InputError(f"--checkpoint is for a trained model (mlffgan), not for method {self.name}")

    def preparer(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        checkpoint: Checkpoint | None = None,
        runtime: Mapping[str, Any] | None = None,
    ) -> Preparer:
        """This method with its options bound (and its model loaded once), ready for any scene.

        Args:
            options: user options by name (text or Python values), checked by :meth:`parse_options`.
            checkpoint: the trained model, for methods that need one.
            runtime: settings of checkpoint methods (``device``, ``amp``, ``compile``, ``tiles``).
        Returns:
            ``preparer(source) -> Prediction``; errors from the method's own checks (bad option
            combinations, too few pairs, images too small) become one-line InputErrors naming the method.
        """
        values = {**dict(self.defaults), **self.parse_options(options)}
        fill_gaps = self.gap_fill(options)
        values.pop(FILL_GAPS, None)
        prepare = _resolve(self.prepare)
        extra: dict[str, Any] = {}
        self.check_checkpoint(checkpoint is not None)
        if checkpoint is not None:
            assert self.load_model is not None
            runtime = dict(runtime or {})
            tiles = runtime.pop("tiles", None)
            extra["model"] = _resolve(self.load_model)(checkpoint, **runtime)
            if tiles is not None:
                extra["tiles"] = tiles
        fewest, most = self.pairs

        def prepare_scene(source: SceneSource) -> Prediction:
            if source.n_pairs < fewest:
                raise PairCountError(
                    f"method {self.name} needs at least {fewest} reference pairs, the case has "
                    f"{source.n_pairs}"
                )
            if most is not None and source.n_pairs > most:
                if most != 1:
                    raise PairCountError(
                        f"method {self.name} takes at most {most} reference pairs, the case has "
                        f"{source.n_pairs}"
                    )
                from stfusion.pairs import combine_pairs

                return combine_pairs(source, lambda single: self._run(prepare, single, values, extra))
            prediction = self._run(prepare, source, values, extra)
            if fill_gaps and source.n_pairs > 1:
                from stfusion.pairs import GapFilledPrediction

                fallback = get(DEFAULT_METHOD).preparer()
                return GapFilledPrediction(prediction, lambda: fallback(source), self.name, DEFAULT_METHOD)
            return prediction

        return prepare_scene

    def _run(
        self,
        prepare: Callable[..., Prediction],
        source: SceneSource,
        values: dict[str, Any],
        extra: dict[str, Any],
    ) -> Prediction:
        try:
            return prepare(source, **values, **extra)
        except InputError:
            raise
        except (TypeError, ValueError) as exc:
            raise InputError(f"method {self.name}: {exc}") from exc

    def help_text(self) -> str:
        """Summary, pairs, block rule and the options, one per line."""
        fewest, most = self.pairs
        pairs = f"{fewest}" if fewest == most else f"{fewest} or more" if most is None else f"{fewest}-{most}"
        if most == 1:
            pairs += " (several: one prediction per pair, combined by local temporal weights)"
        lines = [f"{self.name}: {self.summary}", f"  reference pairs: {pairs}", f"  blocks: {self.block}"]
        if self.references:
            lines.append(f"  reference: {self.references}")
        if self.needs_checkpoint:
            lines.append("  needs --checkpoint (a trained model)")
        lines += [f"  {option.describe()}" for option in self.options]
        return "\n".join(lines)


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    function: Any = importlib.import_module(module_name)
    for name in attribute.split("."):  # e.g. "MlffganModel.load"
        function = getattr(function, name)
    return cast(Callable[..., Any], function)


_FSDAF_PRESET_HELP = (
    "Rule set: fsdaf_idl the reference IDL code's, zhu2016 the paper's (docs/specs/FSDAF.md, section 4)."
)

#: Every fusion method, by name.
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            name="persistence",
            summary="F2 = F1: the fine image does not change (a baseline every method must beat).",
            prepare="stfusion.baselines.naive:prepare_persistence",
        ),
        Method(
            name="coarse-delta",
            summary="F2 = F1 + (C2 - C1): the fine image changes as the coarse one (baseline).",
            prepare="stfusion.baselines.naive:prepare_coarse_delta",
        ),
        Method(
            name="starfm",
            summary="STARFM (Gao et al. 2006): weighted similar neighbours; any number of pairs.",
            prepare="stfusion.baselines.starfm:prepare",
            pairs=(1, None),
            options=(
                Option(
                    "preset",
                    str,
                    "starfm4py",
                    "Rule set: starfm4py (that package's: 31 x 31 window, local tolerance, 4 classes; the "
                    "best mean of the leave-out benchmark), starfm_v121 (Gao's program v1.2.1, 51 x 51, 40 "
                    "classes), gao2006 (the paper).",
                    choices=("starfm4py", "starfm_v121", "gao2006"),
                ),
                Option(
                    "window_size",
                    int,
                    None,
                    "Search window side in fine pixels, odd; auto: the preset's.",
                    minimum=3,
                    odd=True,
                ),
                Option(
                    "n_classes",
                    int,
                    None,
                    "Classes of the similarity tolerance 2 sigma / n; auto: the preset's.",
                    minimum=1,
                ),
                Option(
                    "fill_holes",
                    bool,
                    True,
                    "Fill pixels the rules leave unpredicted (local value F1 + C2 - C1, clipped); false: NaN",
                ),
                Option("engine", str, "auto", "Computation engine.", choices=("auto", "numba", "torch")),
                Option(
                    "block_rows",
                    int,
                    None,
                    "Output rows per block: memory only, the pixels do not change; auto: ~64 MiB of work.",
                    minimum=1,
                ),
            ),
            block="row blocks with a halo of window_size // 2 rows; global tolerances from one pass",
            references="Gao, Masek, Schwaller, Hall, IEEE TGRS 44(8) (2006) 2207-2218",
            defaults=(("preset", "starfm4py"),),
        ),
        Method(
            name="estarfm",
            summary="ESTARFM (Zhu et al. 2010): two reference pairs, conversion coefficients and temporal "
            "weights.",
            prepare="stfusion.baselines.estarfm:prepare",
            pairs=(2, 2),
            options=(
                Option(
                    "preset",
                    str,
                    "idl",
                    "Rule set: idl (the author's 2018 IDL program), idl_legacy (its earlier rules), paper.",
                    choices=("idl", "idl_legacy", "paper"),
                ),
                Option(
                    "half_window", int, None, "Half side of the search window (pixels); auto: 25.", minimum=1
                ),
                Option(
                    "n_classes",
                    int,
                    None,
                    "Classes of the similarity tolerance 2 sigma / n; auto: 4.",
                    minimum=1,
                ),
                Option(
                    "max_similar", int, None, "Keep only the n most similar pixels (ESTARFM_FAST).", minimum=1
                ),
                Option(
                    "block_rows",
                    int,
                    None,
                    "Output rows per block: memory only, the pixels do not change; auto: ~64 MiB of work.",
                    minimum=1,
                ),
                Option(
                    "coarse_factor",
                    int,
                    None,
                    "Coarse cell side in pixels (preset paper's coarse_cell scope).",
                    minimum=1,
                ),
                Option(
                    FILL_GAPS,
                    bool,
                    True,
                    "Predict the pixels where one reference pair is invalid (a cloud) from the other pair "
                    f"by {DEFAULT_METHOD} with its default options; false: NaN there, as ESTARFM itself "
                    "leaves them",
                ),
            ),
            fills_gaps=True,
            block="row blocks with a halo of half_window rows; global tolerances from one pass",
            references="Zhu, Chen, Gao, Chen, Masek, Remote Sens. Environ. 114 (2010) 2610-2623",
        ),
        Method(
            name="fsdaf",
            summary="FSDAF (Zhu et al. 2016): unmixing, thin-plate spline and residual distribution.",
            prepare="stfusion.baselines.fsdaf:prepare",
            options=(
                Option("preset", str, "fsdaf_idl", _FSDAF_PRESET_HELP, choices=("fsdaf_idl", "zhu2016")),
                Option(
                    "scale_factor",
                    int,
                    None,
                    "Coarse/fine pixel-size ratio (16 for 30 m / 480 m); auto: from the data.",
                    minimum=1,
                ),
                Option("n_classes", int, 5, "Classes of the k-means classification of F1.", minimum=1),
                Option(
                    "seed",
                    int,
                    0,
                    "Seed of the k-means classification (its sample of F1's pixels and its seeding).",
                    minimum=0,
                ),
                Option("window", int, 20, "Half window of the final neighbourhood step (pixels).", minimum=1),
                Option("n_similar", int, 20, "Similar pixels in the final step.", minimum=1),
                Option(
                    "block_size", int, None, "Block side in coarse cells (one spline per block).", minimum=1
                ),
            ),
            block="row strips of FSDAF blocks, read with a margin; global statistics from passes",
            references="Zhu, Helmer, Gao, Liu, Chen, Lefsky, Remote Sens. Environ. 172 (2016) 165-177",
        ),
        Method(
            name="mlffgan",
            summary="MLFF-GAN (Song et al. 2022): a trained generative network (needs --checkpoint).",
            prepare="stfusion.predict:prepare",
            needs_checkpoint=True,
            load_model="stfusion.predict:MlffganModel.load",
            block="overlapping tiles (--tile, --overlap) blended with ramp weights",
            references="Song et al., IEEE TGRS 60 (2022) 4410816",
        ),
    )
}


def default_method(n_pairs: int) -> str:
    """The method used when none is given: the benchmark's best for this number of reference pairs."""
    if n_pairs >= 2:
        return TWO_PAIR_DEFAULT if TWO_PAIR_DEFAULT in METHODS else DEFAULT_METHOD
    return DEFAULT_METHOD


def names() -> tuple[str, ...]:
    """Every method name, in registry order."""
    return tuple(METHODS)


def get(name: str) -> Method:
    """The registry entry of a method; InputError listing the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def split_method_options(
    pairs: Sequence[tuple[str, str]], methods: Sequence[str]
) -> dict[str, dict[str, str]]:
    """``method.key=value`` or ``key=value`` options to method -> {key: value}.

    A bare ``key`` applies to every listed method that has an option of that name (an InputError if
    none has); ``method.key`` to that method only. The same syntax works in every command.
    """
    per_method: dict[str, dict[str, str]] = {name: {} for name in methods}
    for key, value in pairs:
        method, dot, name = key.partition(".")
        if dot:
            if method not in per_method:
                raise InputError(f"--option {key}={value}: method {method!r} is not run here")
            get(method).option(name.replace("-", "_"))
            per_method[method][name] = value
            continue
        takers = [m for m in methods if any(o.name == key.replace("-", "_") for o in get(m).options)]
        if not takers:
            raise InputError(
                f"--option {key}={value}: no method run here has an option {key!r} (see `stfusion methods`)"
            )
        for method in takers:
            per_method[method][key] = value
    return per_method
