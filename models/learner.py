"""The continual learner: one Perceiver IO structure, shared masked weights, per-task everything else.

Tasks are numbered from 0 in the API; in the owner index task ``i`` is ``i + 1`` (0 = free).
Per task the learner keeps its own copy of every tensor that is not a masked core weight (adapter,
latents, biases, norms, decoder query, head), its pick mask (Piggyback / CPG) and the feed-forward
widths it was learned at. Running task ``i`` means calling the network with exactly those tensors.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from crossback.config.model import ImageAdapterConfig, PerceiverConfig, PickOptions, TextAdapterConfig
from crossback.models.perceiver import ENCODER_KV, KEY, PerceiverClassifier, split_kv

from .borrowed import BorrowedParts, check_parts, kv_parts
from .masks import MaskedLayer, TrainingMasks, binarize, effective_weight, init_uniform_

METHODS = ("packnet", "piggyback", "cpg")
HEAD_NAMES = ("query", "head.weight", "head.bias")


@dataclass
class TaskRecord:
    name: str
    num_classes: int
    ff_widths: dict[str, int]
    events: list[dict] = field(default_factory=list)
    classes: list[str] | None = None  # class names in label order (label i is classes[i]); None: not recorded
    train_samples: int = 0  # samples the task was learned from (0: not recorded)


def _ff_groups(net: PerceiverClassifier) -> dict[str, tuple[str, str]]:
    """Every GEGLU feed-forward of the core: group name -> (in-layer weight, out-layer weight)."""
    groups = {}
    for name, module in net.named_modules():
        if name.startswith("core.") and name.endswith(".fn.net") and isinstance(module, nn.Sequential):
            groups[name] = (f"{name}.0.weight", f"{name}.2.weight")
    return groups


def config_from_dict(data: dict) -> PerceiverConfig:
    data = dict(data)
    data["image"] = ImageAdapterConfig(**data.get("image", {}))
    data["text"] = TextAdapterConfig(**data.get("text", {}))
    return PerceiverConfig(**data)


class ContinualLearner:
    def __init__(self, cfg: PerceiverConfig, modality: str, method: str, seed: int = 0,
                 pick: PickOptions = PickOptions(), genesis: int | None = None):
        """``seed`` drives everything this node does (heads, batches, growth) and, without a
        ``genesis``, its initial weights. With a swarm ``genesis`` the initial weights come from it
        alone: every node of the swarm starts from one core, and nodes of one modality (and adapter
        shape) from one adapter, so their tokens share a basis."""
        if method not in METHODS:
            raise ValueError(f"unknown continual-learning method {method!r}; choose one of {list(METHODS)}")
        self.cfg, self.modality, self.method, self.seed, self.pick = cfg, modality, method, seed, pick
        self.genesis = genesis
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed if genesis is None else genesis)
            self.net = PerceiverClassifier(cfg, modality, None if genesis is None else genesis + 1)
        self.net.requires_grad_(False)
        ff = _ff_groups(self.net)
        roles = {w_in: (g, "in") for g, (w_in, _) in ff.items()} | {w_out: (g, "out") for g, (_, w_out) in ff.items()}
        self.layers: dict[str, MaskedLayer] = {}
        self._init_params: dict[str, Tensor] = {}
        for name, p in self.net.named_parameters():
            if name.startswith("core.") and name != "core.latents" and p.ndim == 2:
                group, role = roles.get(name, (None, None))
                self.layers[name] = MaskedLayer(name, nn.Parameter(p.detach().clone()),
                                                torch.zeros(p.shape, dtype=torch.int16), group, role)
            else:
                self._init_params[name] = p.detach().clone()
        self.ff_groups = ff
        self.tasks: list[TaskRecord] = []
        self.task_params: list[dict[str, Tensor]] = []
        self.pick_masks: list[dict[str, Tensor]] = []
        self.borrowing = BorrowedParts(pick.threshold, pick.init_score)  # what it runs of its peers
        # task -> the fused encoder K/V it started learning from (this process only; not checkpointed)
        self.kv_starts: dict[int, Tensor] = {}
        self.adapting = self.adapt_own = False
        self.device = torch.device("cpu")
        self.scores: dict[str, nn.Parameter] = {}
        self.active: int | None = None
        self._training_masks = TrainingMasks()  # the active task's masks, kept between its steps
        # functional_call swaps tensors into the shared modules while it runs, so two threads calling
        # it on one learner (parallel DDV probes, a server answering several peers) would mix tensors
        self._call_lock = threading.RLock()

    @property
    def borrowed(self) -> dict[int, dict[str, Tensor]]:
        """task -> {shared-weight name -> a peer's weight it runs with (frozen)}; see ``.borrowed.BorrowedParts``."""
        return self.borrowing.weights

    @property
    def borrow_masks(self) -> dict[int, dict[str, Tensor]]:
        """task -> the binary masks it learned over its borrowed weights."""
        return self.borrowing.masks

    def to(self, device: str | torch.device) -> "ContinualLearner":
        """Move every tensor the learner runs with to ``device`` (training and inference follow).
        Call it between tasks, not while one is being learned or adapted."""
        if self.active is not None:
            raise RuntimeError("move the learner between tasks, not while one is being learned")
        device = torch.device(device)
        mv = lambda d: {n: t.to(device) for n, t in d.items()}
        self.net.to(device)
        for layer in self.layers.values():
            layer.weight = nn.Parameter(layer.weight.detach().to(device), requires_grad=layer.weight.requires_grad)
            layer.owner = layer.owner.to(device)
        self._init_params = mv(self._init_params)
        self.task_params = [mv(p) for p in self.task_params]
        self.pick_masks = [mv(p) for p in self.pick_masks]
        self.borrowing.to(device)
        self.scores = {}
        self.device = device
        return self

    # ---------------------------------------------------------------- task lifecycle

    def _generator(self, task: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + task * 1009 + salt)

    def ff_widths(self) -> dict[str, int]:
        return {g: self.layers[w_in].width() for g, (w_in, _) in self.ff_groups.items()}

    def begin_task(self, name: str, num_classes: int, classes: list[str] | None = None, train_samples: int = 0) -> int:
        if self.active is not None:
            raise RuntimeError(f"task {self.tasks[self.active].name!r} is still being learned")
        if num_classes < 2:
            raise ValueError(f"task {name!r} needs at least 2 classes, got {num_classes}")
        if classes is not None and (len(classes) != num_classes or len(set(classes)) != num_classes):
            raise ValueError(f"task {name!r}: {num_classes} classes need {num_classes} distinct names, got {list(classes)}")
        i = len(self.tasks)
        gen = self._generator(i, 0)
        source = self._init_params if i == 0 else self.task_params[i - 1]
        # a task's own copy of a shared matrix (see .own_copies) stays with that task
        params = {n: t.detach().clone() for n, t in source.items() if n not in HEAD_NAMES and n not in self.layers}
        q = self.cfg.queries_dim
        params["query"] = torch.randn(1, q, generator=gen)
        params["head.weight"] = init_uniform_(torch.empty(num_classes, q), q, gen)
        params["head.bias"] = init_uniform_(torch.empty(num_classes), q, gen)
        self._training_masks.clear()
        self.task_params.append({n: t.to(self.device).requires_grad_(True) for n, t in params.items()})
        self.pick_masks.append({})
        self.tasks.append(TaskRecord(name, num_classes, self.ff_widths(),
                                     classes=list(classes) if classes is not None else None, train_samples=train_samples))
        self.active = i
        self._claim_weights(i, gen)
        with torch.no_grad():
            self.kv_starts[i] = self.params_for(i)[ENCODER_KV].detach().cpu().clone()
        return i

    def _claim_weights(self, i: int, gen: torch.Generator) -> None:
        owner = i + 1
        claims_free = self.method in ("packnet", "cpg") or i == 0
        with torch.no_grad():
            for layer in self.layers.values():
                if claims_free:
                    free = layer.owner == 0
                    if i > 0 and bool(free.any()):
                        layer.weight[free] = self._fresh(layer, gen)[free]
                    layer.owner[free] = owner
                if i > 0 and self.method in ("piggyback", "cpg"):
                    shape = layer.weight.shape
                    self.scores[layer.name] = nn.Parameter(torch.full(shape, self.pick.init_score, device=self.device))

    def _fresh(self, layer: MaskedLayer, gen: torch.Generator) -> Tensor:
        """Initial values for the free weights a new task claims. In a swarm genesis they are the genesis
        values again, so every task of every node starts in the basis the swarm shares (a borrowed part,
        and how K/V moved, mean the same on both sides); otherwise a fresh draw."""
        origin = self.initial_weight(layer.name) if self.genesis is not None else None
        if origin is not None and origin.shape == layer.weight.shape:
            return origin.detach().to(self.device)
        return init_uniform_(torch.empty(layer.weight.shape), layer.weight.shape[1], gen).to(self.device)

    def end_task(self) -> None:
        i = self._require_active()
        self.pick_masks[i] = {n: (s.detach() > self.pick.threshold) for n, s in self.scores.items()}
        self.scores = {}
        self._training_masks.clear()
        self.task_params[i] = {n: t.detach().requires_grad_(False) for n, t in self.task_params[i].items()}
        for layer in self.layers.values():
            layer.weight.requires_grad_(False)
        self.active = None

    def _require_active(self) -> int:
        if self.active is None:
            raise RuntimeError("no task is being learned")
        return self.active

    def grow(self, units: int) -> dict[str, tuple[int, int]]:
        """Add ``units`` hidden units to every feed-forward, owned by the task being learned."""
        i = self._require_active()
        gen = self._generator(i, 100 + len(self.tasks[i].events))
        owner = i + 1
        grown = {}
        for group, (w_in, w_out) in self.ff_groups.items():
            lin_in, lin_out = self.layers[w_in], self.layers[w_out]
            h = lin_in.width()
            fan_in = lin_in.weight.shape[1]
            new_rows = init_uniform_(torch.empty(2, units, fan_in), fan_in, gen).to(self.device)
            new_cols = init_uniform_(torch.empty(lin_out.weight.shape[0], units), h + units, gen).to(self.device)
            w = lin_in.weight.detach()
            lin_in.weight = nn.Parameter(torch.cat([w[:h], new_rows[0], w[h:], new_rows[1]]))
            o = lin_in.owner
            fill = torch.full((units, fan_in), owner, dtype=o.dtype, device=self.device)
            lin_in.owner = torch.cat([o[:h], fill, o[h:], fill])
            lin_out.weight = nn.Parameter(torch.cat([lin_out.weight.detach(), new_cols], dim=1))
            lin_out.owner = torch.cat([lin_out.owner, torch.full((lin_out.owner.shape[0], units), owner, dtype=o.dtype,
                                                                 device=self.device)], dim=1)
            bias_name = w_in.replace(".weight", ".bias")
            b = self.task_params[i][bias_name].detach()
            zeros = torch.zeros(units, device=self.device)
            self.task_params[i][bias_name] = torch.cat([b[:h], zeros, b[h:], zeros]).requires_grad_(True)
            # keep pick scores shaped like their weights; the new weights are the task's own anyway
            if w_in in self.scores:
                s = self.scores[w_in].detach()
                pad = torch.full((units, fan_in), self.pick.init_score, device=self.device)
                self.scores[w_in] = nn.Parameter(torch.cat([s[:h], pad, s[h:], pad]))
            if w_out in self.scores:
                s = self.scores[w_out].detach()
                pad = torch.full((s.shape[0], units), self.pick.init_score, device=self.device)
                self.scores[w_out] = nn.Parameter(torch.cat([s, pad], dim=1))
            grown[group] = (h, h + units)
        self.tasks[i].ff_widths = self.ff_widths()
        return grown

    # ---------------------------------------------------------------- running a task

    def params_for(self, task: int) -> dict[str, Tensor]:
        if not 0 <= task < len(self.tasks):
            raise IndexError(f"no task {task}; learned tasks: {[t.name for t in self.tasks]}")
        record = self.tasks[task]
        train = task == self.active and torch.is_grad_enabled()
        params = dict(self.task_params[task])
        for name, layer in self.layers.items():
            if name in params:  # the task runs its own copy of this matrix
                continue
            width = record.ff_widths.get(layer.ff_group) if layer.ff_group else None
            weight, owner = layer.sliced(width)
            pick = self._pick(task, name, train)
            if train:
                params[name] = self._training_masks.weight(name, weight, owner, task + 1, pick)
            else:
                params[name] = effective_weight(weight, owner, task + 1, train=False, pick=pick)
        for name in self.borrowed.get(task, {}):
            params[name] = self.borrowing.weight(task, name, train, adapting=task == self.active)
        return params

    def _pick(self, task: int, name: str, train: bool) -> Tensor | None:
        if task == self.active and name in self.scores:
            scores = self.scores[name]
            return binarize(scores, self.pick.threshold) if train else scores.detach() > self.pick.threshold
        return self.pick_masks[task].get(name)

    def initial_weight(self, name: str) -> Tensor:
        """A weight of the network as it was initialised (the swarm genesis's values), read while no other
        thread's ``call`` has swapped a task's tensor in its place."""
        with self._call_lock:
            return self.net.get_parameter(name).detach()

    def call(self, module: nn.Module, params: dict[str, Tensor], args: tuple, kwargs: dict | None = None):
        """``functional_call`` on one of this learner's modules, serialised across threads."""
        with self._call_lock:
            return functional_call(module, params, args, kwargs or {})

    def logits(self, inputs: Tensor, task: int) -> Tensor:
        return self.call(self.net, self.params_for(task), (inputs,))

    def trainable(self) -> tuple[list[Tensor], list[Tensor]]:
        """(weights and per-task tensors, pick scores) that training the active task may change."""
        i = self._require_active()
        if self.adapting:  # the task's own tensors and KV mask move; shared weights only if it owns them
            owned = [l.weight.requires_grad_(True) for l in self.layers.values()
                     if self.adapt_own and bool((l.owner == i + 1).any())]
            return owned + list(self.task_params[i].values()), list(self.borrowing.scores.values())
        owner = i + 1
        weights = [l.weight.requires_grad_(True) for l in self.layers.values() if bool((l.owner == owner).any())]
        return weights + list(self.task_params[i].values()), list(self.scores.values())

    def _share_of_owner(self, owner: int) -> float:
        held = sum(int((l.owner == owner).sum()) for l in self.layers.values())
        return held / sum(l.owner.numel() for l in self.layers.values())

    def owned_fraction(self, task: int) -> float:
        return self._share_of_owner(task + 1)

    def free_fraction(self) -> float:
        return self._share_of_owner(0)

    # ---------------------------------------------------------------- KV contract

    def extract_kv(self, task: int | None = None) -> dict[str, Tensor]:
        """The encoder cross-attention K and V as ``task`` (default: the last learned) runs them."""
        task = len(self.tasks) - 1 if task is None else task
        with torch.no_grad():
            return {n: t.cpu().clone() for n, t in split_kv(self.params_for(task)[ENCODER_KV]).items()}

    def load_kv(self, task: int, kv: dict[str, Tensor]) -> None:
        """Make ``task`` run with a borrowed K and V (frozen); no other task changes."""
        self.load_parts(task, kv_parts(kv))

    def part_shapes(self, task: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every tensor name ``task`` (default: the last) runs with -> its shape: what a part must fit."""
        task = len(self.tasks) - 1 if task is None else task
        with torch.no_grad():
            return {n: tuple(t.shape) for n, t in self.params_for(task).items()}

    def extract_parts(self, names, task: int | None = None) -> dict[str, Tensor]:
        """The tensors ``names`` as ``task`` (default: the last learned) runs them: what a peer borrows."""
        task = len(self.tasks) - 1 if task is None else task
        with torch.no_grad():
            params = self.params_for(task)
            return {n: params[n].detach().cpu().clone() for n in names}

    def load_parts(self, task: int, parts: dict[str, Tensor]) -> None:
        """Make ``task`` run with a peer's tensors: shared-weight matrices frozen (under a mask the
        adaptation learns), per-task tensors as the task's own new values. No other task changes."""
        if not 0 <= task < len(self.tasks):
            raise IndexError(f"no task {task}")
        check_parts(parts, self.part_shapes(task))
        weights = {}
        for name, t in parts.items():
            if name in self.layers:
                weights[name] = t.detach().to(self.device, self.layers[name].weight.dtype).clone()
            else:
                own = self.task_params[task][name]
                self.task_params[task][name] = t.detach().to(self.device, own.dtype).clone().requires_grad_(own.requires_grad)
        self.borrowing.load(task, weights)

    def own_copies(self, task: int) -> list[str]:
        """Shared matrices ``task`` runs as a per-task copy of its own (stored with its tensors)."""
        return sorted(n for n in self.task_params[task] if n in self.layers)

    def make_own_copy(self, task: int, name: str) -> Tensor:
        """Give ``task`` a per-task copy of shared matrix ``name``, starting from what it runs now, and
        return it. The copy is the task's own: adapting it changes no other task (older tasks keep the
        shared weights they own; newer tasks never see it). Call it before ``begin_adaptation``."""
        if name not in self.layers:
            raise KeyError(f"{name!r} is not a shared matrix of this model")
        if self.active is not None:
            raise RuntimeError("make a copy between tasks, not while one is being learned")
        with torch.no_grad():
            current = self.params_for(task)[name].detach().clone()
        self.task_params[task][name] = current
        return current

    # ---------------------------------------------------------------- adaptation of a learned task

    def begin_adaptation(self, task: int, parts: dict[str, Tensor] | None = None, own_weights: bool = False) -> None:
        """Reopen a learned task to adapt its own tensors, optionally on a peer's parts (see
        ``load_parts``) under new piggyback masks (CrossBack's transfer). Older tasks' weights stay
        frozen, so no other task changes; ``own_weights`` also retrains the shared weights this task
        owns (only for the newest task, whose weights no other task sees yet). ``parts`` in the K/V
        wire form (``cross_attn.key`` / ``cross_attn.value``) are accepted too."""
        if self.active is not None:
            raise RuntimeError("finish the task being learned before adapting one")
        if own_weights and task != len(self.tasks) - 1:
            raise RuntimeError(f"task {task}'s weights are already used by newer tasks; cannot retrain them")
        self.adapt_own = own_weights
        if parts is not None:
            self.load_parts(task, kv_parts(parts) if KEY in parts else parts)
            self.borrowing.open_scores(task, self.device)
        self.task_params[task] = {n: t.detach().clone().requires_grad_(True) for n, t in self.task_params[task].items()}
        self.active, self.adapting = task, True

    def end_adaptation(self) -> None:
        task = self._require_active()
        self.borrowing.close_scores(task)
        self.task_params[task] = {n: t.detach().requires_grad_(False) for n, t in self.task_params[task].items()}
        for layer in self.layers.values():
            layer.weight.requires_grad_(False)
        self.active, self.adapting, self.adapt_own = None, False, False

    def task_state(self, task: int) -> dict:
        """Everything that distinguishes one way of finishing ``task`` from another (for comparing arms)."""
        return {"params": {n: t.detach().clone() for n, t in self.task_params[task].items()},
                "owned": {n: l.weight.detach()[l.owner == task + 1].clone() for n, l in self.layers.items()},
                **self.borrowing.state(task)}

    def set_task_state(self, task: int, state: dict) -> None:
        self.task_params[task] = {n: t.clone() for n, t in state["params"].items()}
        with torch.no_grad():
            for n, layer in self.layers.items():
                layer.weight[layer.owner == task + 1] = state["owned"][n]
        self.borrowing.set_state(task, state)

    # ---------------------------------------------------------------- in-task rollback

    def rollback_point(self) -> dict[str, dict[str, Tensor]]:
        """The active task's shared weights, owners, own tensors and mask scores, to ``rollback`` to
        (CPG's compaction tries a sparsity and undoes it); not the published ``node.snapshot.Snapshot``."""
        i = self._require_active()
        return {
            "weights": {n: l.weight.detach().clone() for n, l in self.layers.items()},
            "owners": {n: l.owner.clone() for n, l in self.layers.items()},
            "task": {n: t.detach().clone() for n, t in self.task_params[i].items()},
            "scores": {n: s.detach().clone() for n, s in self.scores.items()},
        }

    def rollback(self, snap: dict[str, dict[str, Tensor]]) -> None:
        i = self._require_active()
        with torch.no_grad():
            for n, layer in self.layers.items():
                layer.weight.copy_(snap["weights"][n])
                layer.owner.copy_(snap["owners"][n])
            for n, t in self.task_params[i].items():
                t.copy_(snap["task"][n])
            for n, s in self.scores.items():
                s.copy_(snap["scores"][n])


def new_learner(cfg, genesis: int | None = None) -> ContinualLearner:
    """The learner a run config (``crossback.config.run.RunConfig``) describes; ``genesis``: a swarm
    genesis seed (default: the run's own seed initialises the network)."""
    return ContinualLearner(cfg.model, cfg.data.modality, cfg.method.name, cfg.seed, cfg.method.piggyback, genesis)
