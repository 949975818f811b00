"""``flowrl datasets list | info NAME | derive SRC OUT --keep ...``: the datasets this machine has, a summary of
one, and partially observed versions of one (``--keep velocities`` makes the ``-v`` POMDP version of a MuJoCo
locomotion dataset, ``--keep positions`` the ``-p`` one, ``--keep 0,3,4`` any subset).

    flowrl datasets derive /work/shared/datasets/hopper-medium.hdf5 hopper-medium-v.hdf5 --keep velocities
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("datasets", help="list local datasets or summarise one", description=__doc__)
    dsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    dsub.required = True
    lp = dsub.add_parser("list", help="local flowrl, Minari and D4RL-cache datasets with sizes and returns")
    lp.add_argument("--fast", action="store_true", help="names only (do not open the files)")
    lp.add_argument(
        "--known",
        action="store_true",
        help="D4RL's maze, AntMaze, Adroit and Kitchen dataset names (D4RL names, Minari ids) with their task, "
        "gymnasium id, episode limit and reference returns; 'here' marks the ones on this machine",
    )
    lp.set_defaults(run=run_list)
    ip = dsub.add_parser("info", help="episodes, returns, dimensions and reference scores of one dataset")
    ip.add_argument("name", help="path, D4RL name, Minari id or flowrl name")
    ip.set_defaults(run=run_info)
    dp = dsub.add_parser(
        "derive",
        help="write a dataset that keeps only some observation dimensions (POMDP -v / -p versions)",
        description="Write SRC with only some dimensions of every observation, as a D4RL-layout .hdf5 (or .npz) "
        "that records them (observation_indices); agents trained on it apply the same selection in every rollout.",
    )
    dp.add_argument("src", help="dataset: path, D4RL name, Minari id or flowrl name")
    dp.add_argument("out", help="file to write: .hdf5 / .h5 (D4RL layout) or .npz")
    dp.add_argument(
        "--keep",
        required=True,
        help="velocities | positions (hopper, halfcheetah, walker2d, ant) | dimensions I,J,K (0-based, in order)",
    )
    dp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    dp.set_defaults(run=run_derive)


def _size(path: Path | None) -> str:
    if path is None or not path.exists():
        return "-"
    total = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{total / 2**20:.1f} MB"


def run_list(args) -> int:
    from flowrl.envs import load_dataset, local_candidates, minari_root
    from flowrl.envs.io_d4rl import d4rl_cache_dir
    from flowrl.envs.minari_io import resolve_minari_id
    from flowrl.scripts.report import table

    if args.known:
        return _run_known()
    cands = local_candidates()
    rows: list[list[object]] = []
    names = [("flowrl", n) for n in cands["flowrl"]]
    names += [("minari", n) for n in cands["minari"] if not n.startswith("flowrl/")]
    names += [("d4rl", n) for n in cands["d4rl"]]
    for kind, name in names:
        path = resolve_minari_id(name) if kind == "minari" else None
        if kind == "flowrl":
            env, level = name.split("-", 1)
            path = resolve_minari_id(f"flowrl/{env}/{level}-v0")
        if args.fast:
            rows.append([name, kind, "-", "-", "-", "-", _size(path)])
            continue
        try:
            s = load_dataset(name).summary()
            norm = s.get("normalized_return_mean")
            rows.append([name, kind, s["transitions"], s["episodes"], s["return_mean"], norm, _size(path)])
        except (ValueError, OSError) as e:
            rows.append([name, kind, f"unreadable: {str(e)[:60]}", "-", "-", "-", _size(path)])
    print(f"Minari root: {minari_root()}   D4RL cache: {d4rl_cache_dir()}")
    if not rows:
        print("no local datasets; `flowrl train` builds hopper-medium, `flowrl collect` makes more")
        return 0
    print(table(["name", "kind", "transitions", "episodes", "mean return", "normalized", "size"], rows))
    return 0


def _run_known() -> int:
    from flowrl.envs.d4rl_suites import known_names
    from flowrl.envs.io_d4rl import find_cached_d4rl
    from flowrl.envs.minari_io import resolve_minari_id
    from flowrl.envs.specs import get_spec
    from flowrl.scripts.report import table

    rows = []
    for name, kind in known_names():
        spec = get_spec(name)
        here = find_cached_d4rl(name) if kind == "d4rl" else resolve_minari_id(name)
        rows.append(
            [name, kind, spec.name, spec.gym_id, spec.max_episode_steps, spec.ref_min_score, spec.ref_max_score]
            + ["here" if here is not None else "-"]
        )
    headers = ["name", "kind", "task", "gymnasium id", "limit", "ref min", "ref max", "local"]
    print(table(headers, rows))
    print("load one with --dataset NAME (add --download to fetch it); D4RL locomotion names work as well")
    return 0


def run_info(args) -> int:
    from flowrl.envs import load_dataset

    ds = load_dataset(args.name)
    width = max(len(k) for k in ds.summary())
    for k, v in ds.summary().items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        print(f"{k.ljust(width)}  {v}")
    return 0


def run_derive(args) -> int:
    from flowrl.envs.derive import write_derived

    out, ds = write_derived(args.src, args.out, args.keep, overwrite=args.overwrite)
    obs_map = ds.observation_map
    print(f"wrote {out}: {ds.num_transitions} transitions, {ds.num_episodes} episodes; {obs_map.describe()}")
    return 0
