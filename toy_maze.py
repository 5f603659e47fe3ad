"""IQL's toy U-maze (section 5.1, Figure 2), measured against the exact optimal values V*.

Paper: "Offline Reinforcement Learning with Implicit Q-Learning", Ilya Kostrikov, Ashvin Nair, Sergey Levine,
arXiv:2110.06169. Reference followed: the authors' toy-maze notebook (quantile_maze.ipynb, JAX, mazelab's
u_maze(width=10, height=9, obstacle_width=6, obstacle_height=3), start (8, 1), goal (1, 1)), as in SPEC.md section 5.
As in the notebook, the start cell lies in mazelab's bottom border wall: the agent leaves it northwards and never re-enters.

Deviations from the reference:
- PyTorch instead of JAX/optax. All expectiles train at once as one batched table that shares each minibatch; one Adam
  over Q and V gives the same per-entry updates as the notebook's two optimizers (Adam is elementwise).
- The notebook only plots; here V* and Q* come from value iteration on the true model, and the policies are rolled out.
- Policies use only actions seen in the dataset (greedy, or AWR's closed-form tabular solution of eq. 7); the notebook
  drew arrows from argmax over all four actions. Arrows are drawn on every free cell, not only where V > 0.
- Shortest-path ties break in action order (N, S, W, E), not by mazelab's Dijkstra; the random streams differ too,
  so the dataset is a different draw from the same distribution.
"""

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import tyro
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of the dataset, the minibatches and (plus one) the evaluation rollouts
    torch_deterministic: bool = True  # deterministic scatter-add of the table gradients on CUDA (CPU always is)
    cuda: bool = True  # train the tables on CUDA when it is available
    width: int = 10  # maze width in cells, border walls included (mazelab's u_maze)
    height: int = 9  # maze height in cells, border walls included (the start is in the bottom wall)
    obstacle_width: int = 6  # width of the obstacle attached to the left wall that makes the U
    obstacle_height: int = 3  # height of that obstacle, centred vertically
    noise: float = 0.25  # probability that the commanded action is replaced by a uniformly random one
    gamma: float = 0.9  # the discount factor gamma
    num_episodes: int = 100  # episodes in the offline dataset
    num_optimal_episodes: int = 1  # episodes of those on a shortest path; the rest act uniformly at random
    max_episode_steps: int = 100  # time limit of the dataset's episodes and of the evaluation rollouts
    expectiles: tuple[float, ...] = (0.5, 0.7, 0.9, 0.95)  # expectiles τ of the V loss, trained at once; 0.5 is one-step
    total_iterations: int = 100_000  # gradient steps on Q and V
    learning_rate: float = 1e-3  # Adam learning rate of the Q and V tables
    batch_size: int = 1024  # transitions per minibatch
    target_update_interval: int = 100  # iterations between copies of Q into the target V is fitted to
    temperature: float = 10.0  # AWR inverse temperature beta of eq. (7)
    eval_episodes: int = 1000  # rollouts per policy in the true stochastic maze
    log_interval: int = 10_000  # iterations between tensorboard scalars and progress lines


ENV_ID = "UMaze-v0"
GOAL_REWARD = 10.0
# mazelab's VonNeumannMotion order, as (row, col) steps: north, south, west, east
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])
NUM_ACTIONS = len(MOVES)


class Batch(NamedTuple):
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray


def check_args(args: Args) -> None:
    if not args.expectiles or not all(0.0 < e < 1.0 for e in args.expectiles):
        raise ValueError(f"--expectiles must all lie strictly between 0 and 1, got {args.expectiles}")
    if not 0.0 <= args.noise <= 1.0:
        raise ValueError(f"--noise is a probability and must lie in [0, 1], got {args.noise}")
    if not 0.0 < args.gamma < 1.0:
        raise ValueError(f"--gamma must lie strictly between 0 and 1, got {args.gamma}")
    top = args.height // 2 - args.obstacle_height // 2
    if min(args.obstacle_width, args.obstacle_height) < 1 or args.width < args.obstacle_width + 3 or top < 2:
        raise ValueError("maze too small for the U: need --width >= --obstacle-width + 3 and a free row above the obstacle")
    if top + args.obstacle_height > args.height - 2:
        raise ValueError("maze too small for the U: need a free row below the obstacle; raise --height")
    if not 0 <= args.num_optimal_episodes <= args.num_episodes or args.num_episodes < 1:
        raise ValueError("need --num-episodes >= 1 and 0 <= --num-optimal-episodes <= --num-episodes")
    if min(args.max_episode_steps, args.total_iterations, args.batch_size, args.eval_episodes, args.log_interval) < 1:
        raise ValueError("--max-episode-steps, --total-iterations, --batch-size, --eval-episodes, --log-interval must be >= 1")
    if args.temperature < 0 or args.target_update_interval < 1:
        raise ValueError("need --temperature >= 0 and --target-update-interval >= 1")


def u_maze(width: int, height: int, obstacle_width: int, obstacle_height: int) -> np.ndarray:
    """mazelab's u_maze: True marks a wall; border walls plus an obstacle attached to the left wall."""
    walls = np.zeros((height, width), dtype=bool)
    walls[[0, -1], :] = True
    walls[:, [0, -1]] = True
    top = height // 2 - obstacle_height // 2
    walls[top : top + obstacle_height, 1 : 1 + obstacle_width] = True
    return walls


def transition_table(walls: np.ndarray) -> np.ndarray:
    """next_state[s, a] for states s = row * width + col; bumping into a wall or the edge leaves the agent in place."""
    height, width = walls.shape
    rows, cols = np.divmod(np.arange(walls.size), width)
    next_state = np.repeat(np.arange(walls.size)[:, None], NUM_ACTIONS, axis=1)
    for a, (dr, dc) in enumerate(MOVES):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        free = inside & ~walls[r.clip(0, height - 1), c.clip(0, width - 1)]
        next_state[free, a] = r[free] * width + c[free]
    return next_state


def value_iteration(next_state: np.ndarray, goal: int, noise: float, gamma: float, tol: float = 1e-10):
    """Exact V* and Q* of the true model: the commanded action runs with probability 1 - noise + noise / 4."""
    executed = (1.0 - noise) * np.eye(NUM_ACTIONS) + noise / NUM_ACTIONS  # [commanded, executed]
    v = np.zeros(len(next_state))
    while True:
        # ALGO LOGIC: entering the goal pays GOAL_REWARD and ends the episode, so nothing is bootstrapped past it
        q = np.where(next_state == goal, GOAL_REWARD, gamma * v[next_state]) @ executed.T
        v_new = q.max(1)
        v_new[goal] = 0.0
        if np.abs(v_new - v).max() < tol:
            return v_new, q
        v = v_new


def shortest_path_policy(next_state: np.ndarray, goal: int) -> np.ndarray:
    """One-hot policy that steps along a shortest path to the goal, ignoring the noise (the notebook's Dijkstra)."""
    dist = np.full(len(next_state), np.inf)
    dist[goal] = 0.0
    for _ in range(len(next_state)):
        dist = np.minimum(dist, 1.0 + dist[next_state].min(1))
    return np.eye(NUM_ACTIONS)[dist[next_state].argmin(1)]


def expectile_loss(diff: torch.Tensor, expectile: torch.Tensor) -> torch.Tensor:
    # L2^tau(u) = |tau - 1(u < 0)| u^2, section 4.1, used by the V loss of eq. (5)
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff**2


def greedy_policy(q: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """argmax of Q over the actions the dataset took in each state; uniform where the dataset never went."""
    # ALGO LOGIC: never pick an action the dataset did not take in that state (the constraint of eq. 4)
    best = np.where(counts > 0, q, -np.inf).argmax(1)
    return np.where((counts > 0).any(1, keepdims=True), np.eye(NUM_ACTIONS)[best], 1.0 / NUM_ACTIONS)


def awr_policy(q: np.ndarray, v: np.ndarray, counts: np.ndarray, temperature: float) -> np.ndarray:
    """Tabular maximiser of eq. (7): pi(a|s) proportional to count(s, a) * exp(beta * (Q(s, a) - V(s)))."""
    with np.errstate(divide="ignore"):
        # ALGO LOGIC: weighted behaviour cloning, computed in log space so large beta * advantage cannot overflow
        logits = np.log(counts) + temperature * (q - v[:, None])
    logits = np.where((counts > 0).any(1, keepdims=True), logits, 0.0)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


def rollout(policies, next_state, start, goal, noise, max_steps, rng):
    """Runs one episode per row of policies ([episode, state, action]) side by side, all in numpy.

    Returns the transitions (with the commanded actions, as the notebook stored them), success flags and lengths."""
    num_episodes = len(policies)
    state, episode = np.full(num_episodes, start), np.arange(num_episodes)
    alive, success = np.ones(num_episodes, bool), np.zeros(num_episodes, bool)
    steps, transitions = np.zeros(num_episodes, int), []
    for _ in range(max_steps):
        if not alive.any():
            break
        cdf = policies[episode, state].cumsum(1)
        action = (cdf < rng.random((num_episodes, 1)) * cdf[:, -1:]).sum(1)
        slipped = rng.random(num_episodes) < noise
        next_obs = next_state[state, np.where(slipped, rng.integers(0, NUM_ACTIONS, num_episodes), action)]
        done = next_obs == goal
        transitions.append((state[alive], action[alive], GOAL_REWARD * done[alive], next_obs[alive], done[alive]))
        steps += alive
        success |= alive & done
        alive &= ~done
        state = next_obs
    return Batch(*(np.concatenate(x) for x in zip(*transitions))), success, steps


def evaluate(policy, next_state, start, goal, args: Args, rng) -> dict:
    policies = np.broadcast_to(policy, (args.eval_episodes, *policy.shape))
    _, success, steps = rollout(policies, next_state, start, goal, args.noise, args.max_episode_steps, rng)
    mean_steps = float(steps[success].mean()) if success.any() else None  # steps of the successful rollouts
    return {"success_rate": float(success.mean()), "mean_steps": mean_steps}


def plot_maze(path, walls, start, goal, visits, panels):
    """Figure 2 of the paper: dataset visits, then value heatmaps on one colour scale with greedy-action arrows."""
    fig = Figure(figsize=(3.6 * (len(panels) + 1), 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels) + 1)
    width = walls.shape[1]
    shown = ~walls.ravel()
    shown[start] = True
    axes[0].imshow(np.ma.masked_where(~shown | (visits == 0), visits).reshape(walls.shape), cmap="YlOrRd", norm="log")
    axes[0].set_title("(a) dataset visits (log scale)")
    vmax = max(float(v[shown].max()) for _, v, _ in panels)
    cells = np.flatnonzero(shown & (np.arange(walls.size) != goal))
    x, y = cells % width, cells // width
    for ax, (title, v, policy) in zip(axes[1:], panels):
        image = ax.imshow(np.ma.masked_where(~shown, v).reshape(walls.shape), cmap="cividis", vmin=0.0, vmax=vmax)
        move = MOVES[policy[cells].argmax(1)]
        ax.quiver(x, y, move[:, 1], -move[:, 0], pivot="mid", scale=1.6, scale_units="xy", width=0.012)
        ax.set_title(title)
    for ax in axes:
        ax.set_facecolor("dimgray")
        for cell, label in ((start, "S"), (goal, "G")):
            ax.text(cell % width, cell // width, label, ha="center", va="center", color="red", backgroundcolor="white")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[1:].tolist(), fraction=0.02, label="V(s)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        check_args(args)
    except ValueError as error:  # a one-line usage error, exit status 2 as for a bad flag
        print(f"toy_maze.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    run_name = f"{ENV_ID}__{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])
    )

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(args.torch_deterministic)
    torch.set_num_threads(1)  # the tables are tiny: a second thread only adds synchronisation on a shared CPU
    rng, eval_rng = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    walls = u_maze(args.width, args.height, args.obstacle_width, args.obstacle_height)
    start, goal = (args.height - 1) * args.width + 1, 1 * args.width + 1
    next_state = transition_table(walls)
    v_star, q_star = value_iteration(next_state, goal, args.noise, args.gamma)
    states = np.flatnonzero(~walls.ravel() & (np.arange(walls.size) != goal))
    states = np.append(states, start)  # goal excluded: it is terminal, V(goal) is never a target

    # ALGO LOGIC: the dataset, a few shortest-path episodes among many uniformly random ones
    uniform = np.full((walls.size, NUM_ACTIONS), 1.0 / NUM_ACTIONS)
    num_random = args.num_episodes - args.num_optimal_episodes
    behaviour = np.stack([shortest_path_policy(next_state, goal)] * args.num_optimal_episodes + [uniform] * num_random)
    dataset, _, _ = rollout(behaviour, next_state, start, goal, args.noise, args.max_episode_steps, rng)
    counts = np.zeros((walls.size, NUM_ACTIONS))
    np.add.at(counts, (dataset.observations, dataset.actions), 1.0)
    data = Batch(*(torch.as_tensor(x, device=device) for x in dataset))
    data = data._replace(rewards=data.rewards.float(), dones=data.dones.float())

    # ALGO LOGIC: tabular Q(s, a) and V(s) as parameters, one slice per expectile, zero-initialised as in the notebook
    num_expectiles = len(args.expectiles)
    q = torch.zeros((num_expectiles, walls.size, NUM_ACTIONS), device=device, requires_grad=True)
    v = torch.zeros((num_expectiles, walls.size), device=device, requires_grad=True)
    q_target = q.detach().clone()
    optimizer = torch.optim.Adam([q, v], lr=args.learning_rate)
    expectiles = torch.tensor(args.expectiles, device=device)[:, None]
    v_star_states, states_t = torch.tensor(v_star[states], device=device), torch.as_tensor(states, device=device)

    start_time = time.time()
    for iteration in range(args.total_iterations):
        indices = torch.randint(len(data.observations), (args.batch_size,), device=device)
        batch = Batch(*(x[indices] for x in data))
        with torch.no_grad():
            # ALGO LOGIC: eq. (6) bootstraps from V(s'), averaging over the dynamics instead of chasing lucky transitions
            target = batch.rewards + args.gamma * (1.0 - batch.dones) * v[:, batch.next_observations]
        qf_loss = ((q[:, batch.observations, batch.actions] - target) ** 2).mean(1)
        # ALGO LOGIC: eq. (5), V is the tau-expectile over the dataset's actions of the frozen copy of Q
        vf_loss = expectile_loss(q_target[:, batch.observations, batch.actions] - v[:, batch.observations], expectiles).mean(1)
        optimizer.zero_grad()
        (qf_loss + vf_loss).sum().backward()
        optimizer.step()
        if iteration % args.target_update_interval == 0:
            q_target = q.detach().clone()

        # TRY NOT TO MODIFY: record losses and the distance to V* for plotting purposes
        if iteration % args.log_interval == 0 or iteration == args.total_iterations - 1:
            v_error = (v.detach()[:, states_t] - v_star_states).abs().mean(1)
            for i, expectile in enumerate(args.expectiles):
                writer.add_scalar(f"losses/qf_loss_tau{expectile}", qf_loss[i].item(), iteration)
                writer.add_scalar(f"losses/vf_loss_tau{expectile}", vf_loss[i].item(), iteration)
                writer.add_scalar(f"values/v_error_tau{expectile}", v_error[i].item(), iteration)
                writer.add_scalar(f"values/v_start_tau{expectile}", v[i, start].item(), iteration)
            sps = int((iteration + 1) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, iteration)
            errors = " ".join(f"tau={e}: {err:.3f}" for e, err in zip(args.expectiles, v_error.tolist()))
            print(f"iteration={iteration} SPS={sps} mean|V-V*| {errors}")

    q_np, v_np = q.detach().cpu().double().numpy(), v.detach().cpu().double().numpy()
    baselines = {
        "optimal": evaluate(np.eye(NUM_ACTIONS)[q_star.argmax(1)], next_state, start, goal, args, eval_rng),
        "random": evaluate(uniform, next_state, start, goal, args, eval_rng),
    }
    results = []
    for i, expectile in enumerate(args.expectiles):
        greedy = evaluate(greedy_policy(q_np[i], counts), next_state, start, goal, args, eval_rng)
        awr = evaluate(awr_policy(q_np[i], v_np[i], counts, args.temperature), next_state, start, goal, args, eval_rng)
        v_error = float(np.abs(v_np[i, states] - v_star[states]).mean())
        results.append({"expectile": expectile, "v_error": v_error, "v_start": v_np[i, start], "greedy": greedy, "awr": awr})
        writer.add_scalar(f"eval/v_error_tau{expectile}", v_error, args.total_iterations)
        writer.add_scalar(f"eval/greedy_success_rate_tau{expectile}", greedy["success_rate"], args.total_iterations)
        writer.add_scalar(f"eval/awr_success_rate_tau{expectile}", awr["success_rate"], args.total_iterations)

    print(f"\ndataset: {len(dataset.observations)} transitions; {args.eval_episodes} rollouts per policy; steps of successes")
    header = ("mean|V-V*|", "V(start)", "V*(start)", "greedy success", "steps", "AWR success", "steps")
    widths, specs = (11, 10, 10, 16, 7, 13, 7), (".3f", ".3f", ".3f", ".3f", ".1f", ".3f", ".1f")
    print(f"{'policy':<14}" + "".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    rows = [
        ("optimal (V*)", 0.0, v_star[start], baselines["optimal"], None),
        ("random", None, None, baselines["random"], None),
    ]
    for r in results:
        rows.append((f"IQL tau={r['expectile']}", r["v_error"], r["v_start"], r["greedy"], r["awr"]))
    for name, v_error, v_start, greedy, awr in rows:
        metrics = [(policy or {}).get(key) for policy in (greedy, awr) for key in ("success_rate", "mean_steps")]
        cells = [v_error, v_start, v_star[start], *metrics]
        print(f"{name:<14}" + "".join(f"{'-' if c is None else format(c, f):>{w}}" for c, w, f in zip(cells, widths, specs)))

    summary = {"v_star_start": v_star[start], "num_transitions": len(dataset.observations), **baselines, "iql": results}
    with open(f"runs/{run_name}/results.json", "w") as f:
        json.dump({"args": vars(args), **summary}, f, indent=2)
    lo, hi = int(np.argmin(args.expectiles)), int(np.argmax(args.expectiles))
    panels = [
        ("(b) V* (value iteration)", v_star, np.eye(NUM_ACTIONS)[q_star.argmax(1)]),
        (
            f"(c) {'one-step, ' * (args.expectiles[lo] == 0.5)}τ={args.expectiles[lo]}",
            v_np[lo],
            greedy_policy(q_np[lo], counts),
        ),
        (f"(d) IQL, τ={args.expectiles[hi]}", v_np[hi], greedy_policy(q_np[hi], counts)),
    ]
    visits = np.bincount(np.append(dataset.observations, dataset.next_observations[dataset.dones]), minlength=walls.size)
    plot_maze(f"runs/{run_name}/toy_maze.png", walls, start, goal, visits, panels)
    print(f"wrote runs/{run_name}/results.json and runs/{run_name}/toy_maze.png")
    writer.close()
