"""Parameter groups of the paper as a Keras optimizer wrapper (SPEC 3)."""

# The three parameter groups of the reference (SPEC section 3):
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
    if group not in GROUPS:
        raise ValueError(
            f"`group` must be one of {list(GROUPS)}. Received: group={group!r}"
        )
    setattr(variable, _TAG, group)
    return variable
