"""Parameter groups of the paper as a Keras optimizer wrapper (Section 3.2)."""

import re
import warnings

import keras
from keras import ops

from keras_bninit._validation import choice, positive_float
from keras_bninit.hyperparameters import HyperVariables
from keras_bninit.torch_sgd import TorchSGD  # noqa: F401  (public here too)

# The three parameter groups of the reference (Section 3.2):
SCALE = "scale"  # BN scales: lr / gamma_lr_divisor, no weight decay
DECAY = "decay"  # conv / dense kernels: lr, coupled L2 weight decay
NO_DECAY = "no_decay"  # BN shifts, biases, everything else: lr, no decay
GROUPS = (SCALE, DECAY, NO_DECAY)

_TAG = "bninit_group"


def tag_variable(variable, group):
    """Marks `variable` as belonging to a parameter group.

    Layers whose parameters do not follow Keras's naming (e.g. the A2
    formulation, where `rho` carries c and gets the reduced learning rate
    while its `gamma` does not) tag their variables in `build`; the default
    rule of `ParamGroupOptimizer` reads the tag before it looks at names.

    Args:
        variable: a `keras.Variable`.
        group: one of `"scale"`, `"decay"`, `"no_decay"`.

    Returns:
        The variable.
    """
    setattr(variable, _TAG, choice("group", group, GROUPS))
    return variable


# Keras names of the variables the default rule recognises.
SCALE_NAMES = ("gamma",)
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")

# Inner-optimizer arguments that the wrapper cannot honour on the inner one.
_UNSUPPORTED_INNER = {
    "use_ema": "apply EMA outside the wrapper (e.g. a callback)",
    "gradient_accumulation_steps": "accumulate outside the wrapper",
    "loss_scale_factor": "use keras.optimizers.LossScaleOptimizer around "
    "the wrapper (mixed precision does this for you)",
    "clipnorm": "pass clipnorm to ParamGroupOptimizer instead",
    "clipvalue": "pass clipvalue to ParamGroupOptimizer instead",
    "global_clipnorm": "pass global_clipnorm to ParamGroupOptimizer instead",
}


def _short_name(variable):
    path = getattr(variable, "path", None) or variable.name
    return path.split("/")[-1].split(":")[0]


def default_group(variable):
    """The default rule that assigns a variable to a parameter group.

    In order: a tag set with `tag_variable` (our own layers tag their
    parameters); a variable named `gamma` (the scale of BatchNormalization,
    InputBatchNorm and of BNs in nested models; LayerNormalization and
    GroupNormalization name their scales `gamma` too) is a scale; a
    convolution or dense kernel is decayed; everything else (BN betas, all
    biases, embeddings, ...) gets the plain learning rate and no decay
    (Section 3.2).

    Args:
        variable: a `keras.Variable`.

    Returns:
        `"scale"`, `"decay"` or `"no_decay"`.
    """
    tag = getattr(variable, _TAG, None)
    if tag is not None:
        return tag
    name = _short_name(variable)
    if name in SCALE_NAMES:
        return SCALE
    if name in KERNEL_NAMES:
        return DECAY
    return NO_DECAY


def _compile_patterns(name, patterns):
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = (patterns,)
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as error:
            raise ValueError(
                f"`{name}` must be regular expressions. "
                f"Received: {name}={patterns!r} ({error})"
            ) from None
    return tuple(compiled)


_WARNED = set()


def _inner_argument(inner_optimizer, optimizer):
    """`inner_optimizer`, or the deprecated `optimizer=` (warned once)."""
    if optimizer is None:
        return inner_optimizer
    if inner_optimizer is not None:
        raise ValueError(
            "Pass the wrapped optimizer once, as `inner_optimizer` "
            "(`optimizer` is its former name). Received both."
        )
    if "optimizer" not in _WARNED:
        _WARNED.add("optimizer")
        warnings.warn(
            "ParamGroupOptimizer(optimizer=...) is deprecated; use "
            "inner_optimizer=..., as keras.optimizers.LossScaleOptimizer "
            "names it.",
            DeprecationWarning,
            stacklevel=3,
        )
    return optimizer


@keras.saving.register_keras_serializable(package="keras_bninit")
class ParamGroupOptimizer(keras.optimizers.Optimizer):
    """Wraps any Keras optimizer and gives it the paper's parameter groups.

    `weight_decay` here is PyTorch's *coupled* L2 (`g <- g + wd * w`, added
    to the gradient before the inner optimizer's update), as in the
    reference, not Keras's decoupled `weight_decay` argument of optimizers
    (which an inner AdamW keeps, see below).

    Three groups, decided once per variable when the optimizer is built
    (Section 3.2, Proposal 2):
    - `"scale"` (BN scales): learning rate `lr(t) / gamma_lr_divisor` at
      every step, following the schedule; no weight decay.
    - `"decay"` (conv and dense kernels): learning rate `lr(t)` and
      PyTorch-style *coupled* L2 weight decay, `g <- g + weight_decay * w`
      before the inner optimizer's update.
    - `"no_decay"` (BN shifts, all biases, everything else): `lr(t)`, no
      decay.

    The reduced learning rate scales the inner optimizer's *step* (it is
    passed as that variable's learning rate), so it is exact for adaptive
    optimizers too (Adam is invariant to gradient scale). A schedule with
    a `group_learning_rate(lr, factor)` method (`EpochCosineDecay`) decides
    the scales' rate itself (e.g. PyTorch's per-group `eta_min` floor).
    With `TorchSGD` the whole update equals PyTorch's SGD with the
    reference's parameter groups.

    The inner optimizer's own state (iterations, learning rate or schedule,
    moments) is the state of the wrapper: `learning_rate` and `iterations`
    delegate to it, so schedules and callbacks keep working, and checkpoints
    and `model.save()` hold all of it. An inner optimizer's own decoupled
    `weight_decay` (e.g. AdamW) is kept, and restricted to the `"decay"`
    group.

    A variable's group is decided in one order: an explicit tag
    (`tag_variable`, which this package's layers set) first, then
    `classify`, then the patterns (scale, no-decay, decay), then the
    default rule by name (`default_group`).

    Args:
        inner_optimizer: a Keras optimizer instance, not yet built (SGD,
            Adam, AdamW, RMSprop, ...; float learning rate or a schedule),
            as `keras.optimizers.LossScaleOptimizer` names it.
        gamma_lr_divisor: the divisor a (> 0) of the scales' learning rate;
            the paper uses 100. 1 gives BASE.
        weight_decay: coupled L2 coefficient (>= 0) for the `"decay"` group;
            the paper uses 1e-4.
        scale_patterns, no_decay_patterns, decay_patterns: optional regular
            expressions (one or a list) searched in each variable's path
            (e.g. `"conv1/kernel"`); a match puts the variable in that group,
            checked in this order before the default rule.
        classify: optional callable `variable -> group or None`, checked
            first; `None` falls through to the patterns and the default rule
            (`default_group`).
        clipnorm, clipvalue, global_clipnorm: gradient clipping, applied
            before weight decay (as Keras does).
        name: optimizer name.
        optimizer: the former name of `inner_optimizer` (deprecated).
        separate_scale_rate: True: the scales' rate is computed from
            variables in the compiled step even at `gamma_lr_divisor=1`
            (where it is lr(t), bit for bit), so `set_hyperparameters` may
            move the divisor to or from 1 without a new program (a sweep
            trains BASE in the method's). False: at a = 1 the scales update
            as every other variable.

    Example:

    ```python
    optimizer = kb.ParamGroupOptimizer(
        kb.TorchSGD(0.1, momentum=0.9), gamma_lr_divisor=100, weight_decay=1e-4
    )
    model.compile(optimizer, "sparse_categorical_crossentropy")
    print(optimizer.describe(model.trainable_variables))
    ```

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 3.2 (reduced learning rate of the BN scale).
    """

    def __init__(
        self,
        inner_optimizer=None,
        gamma_lr_divisor=100.0,
        weight_decay=1e-4,
        scale_patterns=None,
        no_decay_patterns=None,
        decay_patterns=None,
        classify=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        name="param_group_optimizer",
        optimizer=None,
        separate_scale_rate=False,
        **kwargs,
    ):
        optimizer = _inner_argument(inner_optimizer, optimizer)
        if kwargs:
            raise ValueError(
                "ParamGroupOptimizer does not support the arguments "
                f"{sorted(kwargs)}; configure them on the inner optimizer. "
                f"Received: {kwargs}"
            )
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            raise ValueError(
                "`inner_optimizer` must be a Keras optimizer instance such as "
                "keras.optimizers.SGD(0.1, momentum=0.9) (not a "
                f"LossScaleOptimizer). Received: inner_optimizer={optimizer!r}"
            )
        if isinstance(optimizer, ParamGroupOptimizer):
            raise ValueError(
                "`inner_optimizer` is already a ParamGroupOptimizer; wrap "
                "the inner optimizer once (its groups would apply twice). "
                f"Received: inner_optimizer={optimizer.name!r} wrapping "
                f"{optimizer.inner_optimizer.name!r}"
            )
        if optimizer.built:
            raise ValueError(
                "`inner_optimizer` must not be built yet: the wrapper "
                "builds it on the model's variables. Received a built "
                f"{optimizer.name!r}."
            )
        for attr, hint in _UNSUPPORTED_INNER.items():
            value = getattr(optimizer, attr, None)
            if value:
                raise ValueError(
                    f"ParamGroupOptimizer does not support an inner optimizer "
                    f"with {attr}={value!r}: {hint}."
                )
        if not isinstance(separate_scale_rate, bool):
            raise ValueError(
                "`separate_scale_rate` must be True or False. Received: "
                f"separate_scale_rate={separate_scale_rate!r}"
            )
        if classify is not None and not callable(classify):
            raise ValueError(
                f"`classify` must be callable or None. Received: {classify!r}"
            )
        super().__init__(
            learning_rate=0.0,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            name=name,
        )
        self.inner_optimizer = optimizer
        self.separate_scale_rate = separate_scale_rate
        self.gamma_lr_divisor = positive_float(
            "gamma_lr_divisor", gamma_lr_divisor
        )
        self.coupled_weight_decay = positive_float(
            "weight_decay", weight_decay, allow_zero=True
        )
        self.scale_patterns = scale_patterns
        self.no_decay_patterns = no_decay_patterns
        self.decay_patterns = decay_patterns
        self._pattern_rules = tuple(
            (group, _compile_patterns(arg, patterns))
            for group, arg, patterns in (
                (SCALE, "scale_patterns", scale_patterns),
                (NO_DECAY, "no_decay_patterns", no_decay_patterns),
                (DECAY, "decay_patterns", decay_patterns),
            )
        )
        self.classify = classify
        # What the compiled step reads of the groups' numbers (not tracked,
        # not saved; listed by `variables`), see `keras_bninit.hyperparameters`.
        object.__setattr__(
            self,
            "_hyper",
            HyperVariables(
                "param_groups", {"decay": 0.0, "offset": 0.0, "ratio": 1.0}
            ),
        )
        self._refresh_hyperparameters()
        # One step counter: the inner optimizer's. Base `apply` increments
        # `self._iterations`, and the inner `update_step` (e.g. Adam's bias
        # correction) and its schedule read it.
        self._iterations = optimizer.iterations
        self._groups = []
        self._lr_factors = []
        self._scaled = []  # structure: the step computes the rate's terms
        self._decays = []

    # -- parameter groups ----------------------------------------------------

    def group_of(self, variable):
        """The group (`"scale"`, `"decay"`, `"no_decay"`) of a variable: its
        tag, else `classify`'s answer, else a pattern's, else the rule."""
        tag = getattr(variable, _TAG, None)
        if tag is not None:
            return tag
        if self.classify is not None:
            group = self.classify(variable)
            if group is not None:
                if group not in GROUPS:
                    raise ValueError(
                        f"`classify` must return one of {list(GROUPS)} or "
                        f"None. Received: {group!r} for variable "
                        f"{getattr(variable, 'path', variable.name)!r}"
                    )
                return group
        path = getattr(variable, "path", None) or variable.name
        for group, patterns in self._pattern_rules:
            if any(p.search(path) for p in patterns):
                return group
        return default_group(variable)

    def _scale_terms(self):
        """`(offset, ratio)` of the scales' rate: offset + (lr - offset) *
        ratio, from the schedule's `group_terms` where it has one."""
        factor = 1.0 / self.gamma_lr_divisor
        schedule = self.inner_optimizer._learning_rate
        if hasattr(schedule, "group_terms"):
            return schedule.group_terms(factor)
        return 0.0, factor

    def _refresh_hyperparameters(self):
        """Writes the current divisor, decay and schedule numbers into the
        variables the compiled step reads."""
        offset, ratio = self._scale_terms()
        self._hyper.assign(
            decay=self.coupled_weight_decay, offset=offset, ratio=ratio
        )

    def set_hyperparameters(self, gamma_lr_divisor=None, weight_decay=None):
        """New divisor a and weight decay, for the same compiled program.

        Call it also after the schedule's `set_values`. On a built
        optimizer, a divisor of 1 (no scale group, unless
        `separate_scale_rate`) and a decay of 0 (no decay term) are part of
        the program's structure: switching them on or off needs a new
        optimizer.
        """
        new_divisor = self.gamma_lr_divisor
        if gamma_lr_divisor is not None:
            new_divisor = positive_float("gamma_lr_divisor", gamma_lr_divisor)
        new_decay = self.coupled_weight_decay
        if weight_decay is not None:
            new_decay = positive_float("weight_decay", weight_decay, True)
        scale_moves = (new_divisor == 1.0) != (self.gamma_lr_divisor == 1.0)
        if self.built and (
            (scale_moves and not self.separate_scale_rate)
            or (new_decay == 0.0) != (self.coupled_weight_decay == 0.0)
        ):
            raise ValueError(
                "A built ParamGroupOptimizer keeps whether the scales have "
                "their own rate (gamma_lr_divisor != 1, or always with "
                "separate_scale_rate=True) and whether kernels decay "
                "(weight_decay != 0). Received: gamma_lr_divisor="
                f"{new_divisor!r}, weight_decay={new_decay!r} on one built "
                f"with {self.gamma_lr_divisor!r}, {self.coupled_weight_decay!r}"
            )
        self.gamma_lr_divisor = new_divisor
        self.coupled_weight_decay = new_decay
        if self.built:
            pairs = [self._factor_and_decay(g) for g in self._groups]
            self._lr_factors = [factor for factor, _ in pairs]
            self._decays = [decay for _, decay in pairs]
        self._refresh_hyperparameters()

    def _factor_and_decay(self, group):
        if group == SCALE:
            return 1.0 / self.gamma_lr_divisor, 0.0
        if group == DECAY:
            return 1.0, self.coupled_weight_decay
        return 1.0, 0.0

    def build(self, var_list):
        if self.built:
            return
        var_list = list(var_list)
        self._groups = [self.group_of(v) for v in var_list]
        pairs = [self._factor_and_decay(g) for g in self._groups]
        self._lr_factors = [factor for factor, _ in pairs]
        self._decays = [decay for _, decay in pairs]
        self._scaled = [
            f != 1.0 or (g == SCALE and self.separate_scale_rate)
            for f, g in zip(self._lr_factors, self._groups)
        ]
        inner = self.inner_optimizer
        if inner.weight_decay:
            excluded = [v for v, g in zip(var_list, self._groups) if g != DECAY]
            if excluded:
                inner.exclude_from_weight_decay(var_list=excluded)
        inner.build(var_list)
        super().build(var_list)

    def describe(self, variables=None):
        """A table of every variable with its group, lr factor and decay.

        Args:
            variables: the variables to classify; defaults to those the
                optimizer was built with.

        Returns:
            A string, one line per variable (like the reference prints its
            parameter groups).
        """
        if variables is None:
            if not self.built:
                raise ValueError(
                    "describe() needs `variables` before the optimizer is "
                    "built, e.g. describe(model.trainable_variables)."
                )
            variables = self._trainable_variables
        rows = []
        for v in variables:
            group = self.group_of(v)
            factor, decay = self._factor_and_decay(group)
            path = getattr(v, "path", None) or v.name
            rows.append(
                (path, str(tuple(v.shape)), group, f"{factor:g}", f"{decay:g}")
            )
        header = ("variable", "shape", "group", "lr factor", "weight decay")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in [header] + rows
        ]
        counts = {g: sum(1 for r in rows if r[2] == g) for g in GROUPS}
        lines.insert(
            0,
            "group order: tag > classify > patterns > default rule "
            "(ParamGroupOptimizer.group_of)",
        )
        lines.append(
            "groups: "
            + ", ".join(f"{g}={n}" for g, n in counts.items())
            + f" (gamma_lr_divisor={self.gamma_lr_divisor:g}, "
            f"weight_decay={self.coupled_weight_decay:g})"
        )
        return "\n".join(lines)

    # -- the update ------------------------------------------------------------

    def update_step(self, gradient, variable, learning_rate):
        # `variable` may be a raw tf.Variable without a Keras path (the TF
        # backend and tf.distribute hand those over), so the group was
        # decided in `build` and is looked up by identity here.
        # The groups' numbers come from variables (`_hyper`), so a new
        # divisor, decay or schedule needs no new program; whether a group
        # is scaled or decayed at all is structure, fixed at build.
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        if self._decays[index]:
            decay = self._hyper.read("decay", dtype)
            gradient = ops.add(gradient, ops.multiply(decay, variable))
        if self._scaled[index]:
            learning_rate = ops.cast(learning_rate, dtype)
            schedule = self.inner_optimizer._learning_rate
            if hasattr(schedule, "group_learning_rate") and not hasattr(
                schedule, "group_terms"
            ):  # a schedule of another library decides by itself
                learning_rate = schedule.group_learning_rate(
                    learning_rate, self._lr_factors[index]
                )
            else:  # offset + (lr - offset) * ratio; offset 0 is exact
                offset = self._hyper.read("offset", dtype)
                ratio = self._hyper.read("ratio", dtype)
                learning_rate = ops.add(
                    offset,
                    ops.multiply(ops.subtract(learning_rate, offset), ratio),
                )
        self.inner_optimizer.update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        # The wrapper's own decay is coupled (in `update_step`); this applies
        # the inner optimizer's decoupled decay, if it has one.
        self.inner_optimizer._apply_weight_decay(variables)

    # -- delegated state -------------------------------------------------------

    @property
    def variables(self):
        # The inner optimizer's (saved), then the numbers the step reads
        # (not saved): listed so that JAX's compiled step gets them as
        # state rather than baking their values in.
        schedule = self.inner_optimizer._learning_rate
        return [
            *self.inner_optimizer.variables,
            *self._hyper.variables,
            *getattr(schedule, "variables", []),
        ]

    def save_own_variables(self, store):
        # `variables` are the inner optimizer's, and Keras's saving writes
        # them again under `inner_optimizer/` (it visits that attribute as a
        # child): the inner optimizer's copy is the one kept, so each
        # variable is saved once. The wrapper's own iteration and learning
        # rate variables (from the base class) are unused.
        pass

    def load_own_variables(self, store):
        # Files written before the above hold the same values twice (here
        # and under `inner_optimizer/`); the inner optimizer loads its copy.
        pass

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def _get_current_learning_rate(self):
        return self.inner_optimizer._get_current_learning_rate()

    @property
    def iterations(self):
        """The step counter: the inner optimizer's."""
        return self.inner_optimizer.iterations

    @property
    def weight_decay(self):
        """The coupled L2 coefficient of the `"decay"` group."""
        return self.coupled_weight_decay

    @weight_decay.setter
    def weight_decay(self, value):
        if not hasattr(self, "coupled_weight_decay"):
            return  # the base class's __init__ (None); set in ours
        if self.built:
            raise ValueError(
                "Set `weight_decay` before the optimizer is built (its "
                "groups' decays are fixed then): e.g. before model.fit, or "
                "use set_hyperparameters(weight_decay=...). Received: "
                f"weight_decay={value!r} on a built optimizer"
            )
        self.set_hyperparameters(weight_decay=value)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            "gamma_lr_divisor": self.gamma_lr_divisor,
            "weight_decay": self.coupled_weight_decay,
            "scale_patterns": self.scale_patterns,
            "no_decay_patterns": self.no_decay_patterns,
            "decay_patterns": self.decay_patterns,
            "classify": None
            if self.classify is None
            else keras.saving.serialize_keras_object(self.classify),
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
            "separate_scale_rate": self.separate_scale_rate,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if "optimizer" in config:  # written by 0.2
            config["inner_optimizer"] = config.pop("optimizer")
        config["inner_optimizer"] = keras.optimizers.deserialize(
            config["inner_optimizer"], custom_objects=custom_objects
        )
        if config.get("classify") is not None:
            config["classify"] = keras.saving.deserialize_keras_object(
                config["classify"], custom_objects=custom_objects
            )
        return cls(**config)
