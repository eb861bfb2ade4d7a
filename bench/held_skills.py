"""Why held skills fail (issue 13 §2): closed loop on MetaWorld evaluation layouts with
the policy's own sampled skills against teacher-forced skills.

    python bench/held_skills.py --workdir=W [--tasks=rlbench6] [--seeds=10] [--episodes=10]
        [--modes=sampled,oracle] [--resample-every=0] [--ensemble-m=...]

Teacher forcing ("oracle"): whenever the policy is about to start a skill, the scripted
expert is run, without noise, from the current simulator state (remade by replay) until it
succeeds (as the dataset builder records episodes), its actions are segmented and
labelled exactly as `build-data` does, and the skill encoder's quantised tokens of the
first segment (resampled to L, normalised with the checkpoint's statistics) replace the
sampler's draw. That is the closed-loop bound of the paper's mechanism: the decoder and
the keypose trigger with the right skill at every start.

In "sampled" mode the same oracle tokens are computed at each skill start but not used:
the table reports how often the sampler's tokens (snapped onto the codebook) equal the
encoder's, on the states the policy itself reaches, and the label the rule annotator
gives the true next segment against the sampler's label head. Prints one row per task
and mode: success rate, skills per episode, skills ended by the step cap, token match,
label-head accuracy at skill starts. Use evaluation seeds other than the reported ones
to choose settings (default 10).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def _expert_future(shadow, layout: int, executed, reference_state, task: str,
                   max_steps: int):
    """The noise-free expert's (action, action_abs, proprio) from the evaluation env's
    current state until success or `max_steps` steps.

    The state is remade in `shadow` (a MetaWorldEnv of the same task) by replaying the
    episode's executed commands from the layout's reset: MuJoCo is deterministic, so
    the replayed state equals the evaluation env's (checked against `reference_state`).
    A deep copy of the env is not: its next step differs by ~0.1 (MetaWorld's env keeps
    state a copy does not carry), which made an earlier version of this bench compute
    its oracle from the wrong simulator state."""
    from atomskill_jax.envs import metaworld as mw

    shadow.set_layout(layout)
    obs = shadow.reset()
    for action in executed:
        obs = shadow.step(action)[0]
    drift = float(np.abs(np.asarray(obs, np.float32) - reference_state).max())
    if drift > 1e-5:
        raise RuntimeError(f"{task} layout {layout}: the replayed state differs from the "
                           f"evaluation env's by {drift:.3g}")
    policy = mw.expert_policy(task)
    rec = {"action": [], "action_abs": [], "proprio": []}
    for _ in range(max_steps):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = np.clip(np.asarray(policy.get_action(obs), np.float64), -1.0, 1.0)
        rec["proprio"].append(mw.proprio_from_state(obs))
        rec["action"].append(action)
        rec["action_abs"].append(shadow.absolute_target(action))
        obs, _, _, truncated, info = shadow.step(action)
        if info.get("success", 0.0) or truncated:
            break
    return {k: np.asarray(v, np.float32) for k, v in rec.items()}


def _oracle(model, normalizer, future, action_space: str, length: int, task: str,
            signal: str = "action"):
    """(tokens [n, d], code indices [n], label id) of the first segment of `future`."""
    import jax.numpy as jnp

    from atomskill_jax.skills import annotate

    ann = annotate.annotate_arrays(future["action"], future["action_abs"], future["proprio"],
                                   "metaworld_sawyer", "rule", task=task,
                                   signal=signal)
    start, end = ann.segmentation.segments[0]
    actions = future[action_space][start:end + 1]
    # The data pipeline's resampling (data/traj_transforms.resample_segments) in numpy.
    pos = np.arange(length) * (len(actions) - 1) / (length - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(actions) - 1)
    frac = (pos - lo)[:, None].astype(np.float32)
    resampled = actions[lo] * (1 - frac) + actions[hi] * frac
    batch = normalizer.normalize({"skill": {"actions": resampled[None]}})
    codes, indices = model.encode_skill({"skill": {"actions": jnp.asarray(
        batch["skill"]["actions"], jnp.float32)}})
    label = int(ann.annotations[0].label_id)
    return np.asarray(codes[0]), np.asarray(indices[0]), label


def _labels(model, normalizer, obs, lang):
    import jax.numpy as jnp

    o = normalizer.normalize({"observation": obs})["observation"]
    tokens = model.obs_encoder({k: jnp.asarray(v) for k, v in o.items()}, jnp.asarray(lang))
    pooled = model.sampler.pool(tokens, jnp.zeros((len(lang),), jnp.int32))
    return np.asarray(jnp.argmax(model.sampler.label_logits(pooled), -1))


def run_task(model, config, assets, task: str, layouts, seed: int, mode: str, options: dict,
             signal: str = "action"):
    from atomskill_jax.envs import metaworld_eval
    from atomskill_jax.eval import suites
    from atomskill_jax.methods import registry
    from atomskill_jax.models import sentence_encoder
    from atomskill_jax.policies.base import TaskInfo

    policy = registry.get_spec(config).make_policy(model, assets, dict(options))
    spec = policy.spec
    emb = sentence_encoder.embed_texts_cached([suites.instruction(task)])[0]
    envs = [metaworld_eval.MetaWorldEvalEnv(task, spec, language_embedding=emb)
            for _ in layouts]
    codebook = np.asarray(model.vq.codebook[...])
    n = len(envs)
    policy.reset([TaskInfo(task, suites.instruction(task), lay, seed, i)
                  for i, lay in enumerate(layouts)])
    obs = [env.reset(lay) for env, lay in zip(envs, layouts)]
    from atomskill_jax.envs import metaworld as mw

    shadow = mw.MetaWorldEnv(task, max_steps=envs[0].max_steps + 1)  # remakes states
    executed = [[] for _ in envs]  # native commands per env, for the replay
    done, success = np.zeros(n, bool), np.zeros(n, bool)
    counts = {k: np.zeros(n) for k in policy.skill_counts()}
    matches, label_hits, starts = [], [], 0
    action_space = config.data.action_space
    length = int(config.model.skill_length)
    for t in range(envs[0].max_steps):
        state = policy.skill_state()
        begin = state["starting"] & ~done
        oracle = {}
        for i in np.flatnonzero(begin):
            future = _expert_future(shadow, layouts[i], executed[i], envs[i].state, task,
                                    envs[i].max_steps - t)
            oracle[i] = _oracle(model, policy.normalizer, future, action_space, length, task,
                                signal)
        if oracle and mode == "oracle":
            tokens = np.zeros_like(state["tokens"])
            which = np.zeros(n, bool)
            for i, (codes, _, _) in oracle.items():
                tokens[i], which[i] = codes, True
            policy.force_skill(tokens, which)
        batch = suites.stack(obs)
        if oracle:
            predicted = _labels(model, policy.normalizer,
                                {k: v for k, v in batch.items()
                                 if k not in ("language_embedding", "language_instruction")},
                                batch["language_embedding"])
        actions = np.asarray(policy.infer(batch))
        if oracle:
            now = policy.skill_state()["tokens"]
            for i, (_, indices, label) in oracle.items():
                got = ((now[i][:, None] - codebook[None]) ** 2).sum(-1).argmin(-1)
                matches.append(float((got == indices).mean()))
                label_hits.append(float(predicted[i] == label))
                starts += 1
        for i, env in enumerate(envs):
            if done[i]:
                continue
            executed[i].append(env.to_native(actions[i]))
            obs[i], info, truncated = env.step(actions[i], render=False)
            if info.get("success", 0.0):
                success[i] = done[i] = True
            elif truncated:
                done[i] = True
            if done[i]:
                # Counted when the episode ends: the policy goes on stepping finished
                # envs (the batch runs until all are done), and a finished env stands
                # at its keypose, so its trigger fires every step after.
                for key, value in policy.skill_counts().items():
                    counts[key][i] = value[i]
        if done.all():
            break
    final = policy.skill_counts()
    for key, value in final.items():
        counts[key][~done] = value[~done]
    for env in envs:
        env.close()
    shadow.close()
    return {"success": float(success.mean()), "skills": float(counts["skills"].mean()),
            "capped": float(counts["capped"].mean()), "starts": starts,
            "token_match": float(np.mean(matches)) if matches else float("nan"),
            "label_acc": float(np.mean(label_hits)) if label_hits else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tasks", default="rlbench6", help="a suite name or comma-separated tasks")
    parser.add_argument("--seeds", default="10")
    parser.add_argument("--episodes", type=int, default=10, help="per task and seed")
    parser.add_argument("--modes", default="sampled,oracle")
    parser.add_argument("--resample-every", type=int, default=0)
    parser.add_argument("--ensemble-m", default=None)
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--trigger-dims", default=None,
                        help="comma-separated action dims the trigger compares, e.g. 0,1,2")
    parser.add_argument("--max-skill-steps", type=int, default=None)
    parser.add_argument("--gripper-signal", choices=("action", "proprio"), default="action",
                        help="how the oracle segments the expert's future: as the training "
                             "data was annotated (atomskill annotate --gripper-signal)")
    args = parser.parse_args()

    from atomskill_jax.envs import metaworld_eval
    from atomskill_jax.eval import suites
    from atomskill_jax.policies.loading import load_model

    model, config, assets, step = load_model(args.workdir, use_ema=True)
    tasks = suites.resolve_tasks(None if "," in args.tasks else args.tasks,
                                 args.tasks.split(",") if "," in args.tasks else None)
    options = {"resample_every": args.resample_every, "ensemble_m": args.ensemble_m,
               "epsilon": args.epsilon, "max_skill_steps": args.max_skill_steps,
               "trigger_dims": (tuple(int(d) for d in args.trigger_dims.split(","))
                                if args.trigger_dims else None)}
    options = {k: v for k, v in options.items() if v is not None}
    rows = []
    for mode in args.modes.split(","):
        for task in tasks:
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.time()
                layouts = metaworld_eval.eval_layouts(seed, args.episodes)
                r = run_task(model, config, assets, task, layouts, seed, mode, options,
                             args.gripper_signal)
                rows.append((mode, task, seed, r, time.time() - t0))
                print(f"{mode:7s} {task:18s} seed {seed}: SR {100 * r['success']:5.1f}%  "
                      f"skills/ep {r['skills']:4.1f}  capped/ep {r['capped']:4.2f}  "
                      f"token match {r['token_match']:.3f}  label acc {r['label_acc']:.3f}  "
                      f"({r['starts']} starts, {time.time() - t0:.0f} s)", flush=True)
    print(f"\nworkdir {args.workdir} step {step}, options {options}, seeds {args.seeds}, "
          f"{args.episodes} episodes per task and seed")
    print("| mode | SR % | skills/ep | capped/ep | token match | label acc |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode in args.modes.split(","):
        rs = [r for m, _, _, r, _ in rows if m == mode]
        print(f"| {mode} | {100 * np.mean([r['success'] for r in rs]):.1f} | "
              f"{np.mean([r['skills'] for r in rs]):.1f} | {np.mean([r['capped'] for r in rs]):.2f} | "
              f"{np.nanmean([r['token_match'] for r in rs]):.3f} | "
              f"{np.nanmean([r['label_acc'] for r in rs]):.3f} |")


if __name__ == "__main__":
    main()
