"""The sweep command's executors: the options of the local and the Ray
executor checked, a Ray executor made and started, and the dry run's
estimate. Errors are one-line `ValueError`s, which the command line
prints with exit status 2. No import at the top: the command line loads
this module before Keras too.
"""

_RAY_ONLY = ("ray_address", "cpus_per_run", "gpus_per_run", "ship_files")
# RayExecutor's argument names in its messages -> this command's options.
_RAY_OPTIONS = {
    "`address`": "--ray-address",
    "`num_cpus_per_run`": "--cpus-per-run",
    "`num_gpus_per_run`": "--gpus-per-run",
    "`workers`": "--workers",
}


def check_executor_args(args, ray=True):
    """Options of the other executor, and dry-run-only options, rejected;
    with `ray`, the Ray executor's values too (which imports it: after
    Keras has loaded)."""
    if args.executor != "ray":
        for name in _RAY_ONLY:
            if getattr(args, name) not in (None, False):
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} needs --executor ray")
        if args.workers is not None and not args.dry_run:
            raise ValueError(
                "--workers needs --executor ray (the local executor trains "
                "one run at a time)"
            )
    if args.images_per_second is not None:
        if not args.dry_run:
            raise ValueError("--images-per-second needs --dry-run")
        if not args.images_per_second > 0:
            raise ValueError(
                "--images-per-second must be > 0. Received: "
                f"{args.images_per_second:g}"
            )
    if args.workers is not None and args.workers < 1:
        raise ValueError(
            f"--workers must be an integer >= 1. Received: {args.workers}"
        )
    if ray and args.executor == "ray":
        ray_executor(args)  # validates the values; starts nothing


def ray_executor(args):
    from keras_bninit.harness.ray_executor import RayExecutor

    try:
        return RayExecutor(
            address=args.ray_address,
            num_cpus_per_run=1
            if args.cpus_per_run is None
            else args.cpus_per_run,
            num_gpus_per_run=args.gpus_per_run or 0,
            workers=args.workers,
            ship_files=args.ship_files,
        )
    except ValueError as error:
        message = str(error)
        for name, option in _RAY_OPTIONS.items():
            message = message.replace(name, option)
        raise ValueError(message) from None


def executor(args):
    """None (the local executor) or a started RayExecutor."""
    if args.executor != "ray":
        return None
    from keras_bninit.harness.ray_executor import RayUnavailableError

    started = ray_executor(args)
    try:
        started.start()
    except (RayUnavailableError, ValueError) as error:
        raise ValueError(str(error)) from None
    except ConnectionError as error:
        raise ValueError(
            f"cannot reach a Ray cluster at --ray-address "
            f"{args.ray_address}: {error}".replace("\n", " ")
        ) from None
    return started


def print_estimate(runs, images_per_second, workers):
    """The work of a sweep, and its hours at a measured throughput."""
    from keras_bninit.harness.presets import estimate

    plan = estimate(runs, images_per_second, workers or 1)
    images = (
        f"{plan['images']:,} training images"
        if plan["images"] is not None
        else "training images unknown (a directory data set)"
    )
    print(f"{plan['runs']} runs, {plan['epochs']:,} epochs, {images}")
    if plan["hours"] is not None:
        print(
            f"estimated {plan['hours']:.1f} hours on one GPU at "
            f"{images_per_second:,.0f} images/s"
        )
        if workers and workers > 1:
            print(
                f"estimated {plan['hours_workers']:.1f} hours for {workers} "
                f"workers, one GPU each"
            )
