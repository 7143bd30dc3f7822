"""
Uniform-state diffusion and its Gaussian dual: Duo (Sahoo et al., ICML 2025, "The Diffusion Duality").

Forward process. Instead of [MASK], noise replaces a token, with probability 1 - alpha_t, by a token
drawn uniformly from all K tokens (the true one included):
    q(z_t | x) = Cat(alpha_t * onehot(x) + (1 - alpha_t) / K)                          (UDLM eq. 1)
There is no [MASK]: every position always holds a real token, so a sampler that has written a token
can still change it at a later step. That is where self-correction comes from, and why the denoiser
needs to know how noisy its input is (model.py's time conditioning on sigma = -log alpha_t).

The duality. Gaussian diffusion on one-hot vectors, w_t = at * onehot(x) + st * eps with
st = sqrt(1 - at^2), has argmax(w_t) distributed exactly as the uniform-state z_t with
    alpha_t = T(at) = K / (K - 1) * ( integral phi(z - at/st) Phi(z)^(K-1) dz - 1/K )   (Duo eq. 10)
(the true coordinate beats the K - 1 others). So the discrete process inherits tools of the
Gaussian one: a low-variance training curriculum and consistency distillation.

Loss. The closed-form, Rao-Blackwellised continuous-time NELBO of uniform-state diffusion (UDLM,
Schiff et al. 2025; Duo eq. 4), per token with z the noisy token, p the model's prediction, a = alpha_t:
    xb_p = K a p + (1 - a),  xb = K a onehot(x) + (1 - a)
    -(a'/(K a)) [ K / xb_p[z] - K / xb[z] + sum_j (xb_j / xb[z]) log(xb_p[z] xb_j / (xb_p[j] xb[z])) ]
zero at a perfect prediction, positive otherwise (nelbo() computes it without building xb). It is
trained and always evaluated on the discrete log-linear schedule alpha_t = 1 - (1 - ALPHA_MIN) t, so the
number is a bound comparable with MDLM's (diffusion.py).

Curriculum (Duo section 4.1). Early in training the model reads softmax(w_t / tau), tau = 1e-3, a
soft version of z_t = argmax(w_t) (as probabilities @ the embedding matrix), with alpha_t = T(at) on a
window of log-SNR where alpha_t goes from 0.95 to 0.05: lower-variance gradients. Then plain discrete
training. The paper: LM1B perplexity 33.7 with the curriculum, 35.0 without.

Sampling. Ancestral steps with the true posterior q(z_s | z_t, x = p) in float64; top-k / top-p act
on the model's prediction p, never on the posterior; greedy tail: one more forward reads the finished
canvas as clean (t = 0) and every position takes its argmax, a last pass that replaces the tokens the
model finds out of place. No K/V cache: every token can change at every step.

Distillation (DCD, Duo section 5). Fix x and the Gaussian noise eps per token: z_t = argmax(at x + st
eps) is then a deterministic trajectory in t along which each token flips at most once (from the
noise's own argmax to x). The student at t is trained towards the teacher at s = t - delta on the
same trajectory (KL(student || teacher), the teacher without gradient); delta doubles every round and
the teacher is the student copied at the start of each round. The paper (OWT): 8 steps with
greedy-tail, gen PPL 69.6 after 5 rounds vs 193 for distilled MDLM; test bounds AR 17.5, MDLM 23.2,
Duo 25.2 perplexity.

train.py calls noise()/loss() (and dcd_noise()/dcd_loss() for distillation), as for diffusion.py.
"""

import copy
import math

import torch
from torch.nn import functional as F

import diffusion
from configurator import NON_NEGATIVE, POSITIVE, rule
from diffusion import sample_t
from sample import add_gumbel_noise

ALPHA_MIN = 1e-3  # alpha_1: the log-linear schedule stops just short of pure noise


def log_linear(t):
    """The discrete log-linear schedule alpha_t = 1 - (1 - ALPHA_MIN) t and d alpha_t / dt, side by side."""
    return 1 - (1 - ALPHA_MIN) * t, torch.full_like(t, -(1 - ALPHA_MIN))


def prior_kl(K):
    """The bound's prior term KL(q(z_1 | x) || uniform) at alpha_1 = a = ALPHA_MIN: q(z_1 = x) = a + (1 - a)/K,
    each other token (1 - a)/K."""
    a = ALPHA_MIN
    return (a + (1 - a) / K) * math.log1p((K - 1) * a) + (K - 1) * (1 - a) / K * math.log1p(-a)


def q_uniform(x0, alpha_t, K, generator=None):
    """Uniform-state forward process: x0 (B, L), alpha_t (B,) -> z_t (B, L); each token kept w.p.
    alpha_t, else a uniform draw from all K tokens."""
    keep = torch.rand(x0.shape, device=x0.device, generator=generator) < alpha_t[:, None]
    u = torch.randint(K, x0.shape, device=x0.device, generator=generator)
    return torch.where(keep, x0, u)


# -----------------------------------------------------------------------------
# The Gaussian dual: T(at) and its derivative, tabulated once per K on the log-SNR window

def gauss_alpha(gamma):
    """at = sqrt(sigmoid(-gamma)) for log-SNR -gamma (variance preserving: st^2 = sigmoid(gamma))."""
    return torch.sigmoid(-gamma).sqrt()


def T_of(at, K, n=2001):
    """(T(at), dT/dat) for a 1-D float64 tensor of at in (0, 1), by the trapezoid rule over z.
    The integrand phi(z - r) Phi(z)^(K-1), r = at / st, is taken in log space ((K - 1) log Phi
    underflows otherwise for K = 50257); d/dr of the integral is that of (z - r) phi(z - r) Phi^(K-1)."""
    r = (at / (1 - at ** 2).sqrt())[:, None]  # (n_a, 1)
    z = torch.linspace(-12, 12, n, dtype=torch.float64)[None] + torch.clamp(r, min=0)  # where phi(z - r) lives
    f = torch.exp(-0.5 * (z - r) ** 2 - 0.5 * math.log(2 * math.pi) + (K - 1) * torch.special.log_ndtr(z))
    P = torch.trapezoid(f, z, dim=1)
    dP_dr = torch.trapezoid((z - r) * f, z, dim=1)
    dr_da = (1 - at ** 2) ** -1.5
    return K / (K - 1) * (P - 1 / K), K / (K - 1) * dP_dr * dr_da


_tables = {}


def window(K, lo=0.95, hi=0.05):
    """The log-SNR window [gamma_min, gamma_max] on which alpha_t = T(at) runs from lo (t = 0) to hi
    (t = 1), by bisection: it depends on K (about [-2.86, 0.74] for 65 characters, [-3.57, -1.86]
    for GPT-2's 50257 tokens)."""
    def solve(target):
        a, b = torch.tensor([-20.0], dtype=torch.float64), torch.tensor([20.0], dtype=torch.float64)
        for _ in range(60):  # T(at(gamma)) falls as gamma grows
            mid = (a + b) / 2
            if T_of(gauss_alpha(mid), K)[0].item() > target:
                a = mid
            else:
                b = mid
        return ((a + b) / 2).item()
    return solve(lo), solve(hi)


def table(K, n=1001):
    """(gamma grid (n,), alpha_t on it, d alpha_t / d gamma on it) for the window of K, cached."""
    if K not in _tables:
        g_min, g_max = window(K)
        gamma = torch.linspace(g_min, g_max, n, dtype=torch.float64)
        at = gauss_alpha(gamma)
        T, dT = T_of(at, K)
        _tables[K] = gamma, T, dT * (-at * (1 - at ** 2) / 2)  # chain rule: d at / d gamma = -at st^2 / 2
    return _tables[K]


def gauss_schedule(t, K):
    """For t (B,) in [0, 1] on the window: (at, alpha_t = T(at), d alpha_t / dt), float32, by linear
    interpolation in the table."""
    gamma, T, dT = table(K)
    g = gamma[0] + t.double().cpu() * (gamma[-1] - gamma[0])
    pos = ((g - gamma[0]) / (gamma[1] - gamma[0])).clamp(0, len(gamma) - 1.000001)
    i, w = pos.long(), pos - pos.floor()
    lerp = lambda v: v[i] * (1 - w) + v[i + 1] * w  # noqa: E731
    out = gauss_alpha(g), lerp(T), lerp(dT) * (gamma[-1] - gamma[0])
    return tuple(v.float().to(t.device) for v in out)


def gauss_latent(x0, at, K, eps_noise=None, generator=None):
    """w_t = at * onehot(x0) + sqrt(1 - at^2) * eps, (B, L, K) float32; at: (B,)."""
    if eps_noise is None:
        eps_noise = torch.randn(*x0.shape, K, device=x0.device, generator=generator)
    a = at[:, None, None]
    return a * F.one_hot(x0, K).float() + (1 - a ** 2).sqrt() * eps_noise


# -----------------------------------------------------------------------------
# The loss

def nelbo(logits, x0, z, alpha_t, dalpha_t):
    """Per-token uniform-state NELBO integrand (B, L) >= 0 (the module docstring's formula), with the
    one-hot xb folded in. logits: (B, L, >= K) over the K real tokens first; x0, z: (B, L); alpha_t,
    dalpha_t: (B,). float64 for small vocabularies (B x L x K doubles), float32 for big ones; never bf16."""
    K = logits.size(-1) - 1  # the model's vocabulary without its last id, [MASK] (never used here)
    dt = torch.float64 if K <= 4096 else torch.float32
    p = F.softmax(logits[..., :K].to(dt), dim=-1)
    a, da = alpha_t.to(dt)[:, None], dalpha_t.to(dt)[:, None]  # (B, 1)
    xb_p = K * a[..., None] * p + (1 - a[..., None])            # (B, L, K)
    eq = (z == x0).to(dt)
    ne = 1 - eq
    xb_z = (1 - a) + K * a * eq                                  # xb at z
    xbp_z, xbp_x = xb_p.gather(-1, z[..., None])[..., 0], xb_p.gather(-1, x0[..., None])[..., 0]
    kap = (1 - a) / (K * a + 1 - a)                              # xb_j / xb_z for j != x when z = x
    term1 = K * (1 / xb_z - 1 / xbp_z)
    term2 = (-(kap * eq + ne) * (xb_p.log().sum(-1) - K * xbp_z.log())
             - K * a / (1 - a) * (xbp_x.log() - xbp_z.log()) * ne
             + ((K - 1) * kap * eq - ne / kap) * kap.log())
    return (da / (K * a) * (term1 - term2)).float()


def noise(x0, maskable, K, curriculum=False, tau=1e-3, t_eps=1e-3, antithetic=True, generator=None):
    """The noise for a batch of clean rows x0 (B, L) and what the loss needs: (input, x0, z_t, alpha_t,
    dalpha_t, maskable). t ~ U(t_eps, 1), antithetic across the batch. Discrete: the log-linear schedule
    and q_uniform, input = z_t. Curriculum: Gaussian latents on the window, z_t = argmax(w_t),
    alpha_t = T(at), input = softmax(w_t / tau) (B, L, K). Positions not maskable stay clean."""
    B = x0.size(0)
    t = sample_t(B, t_eps, antithetic, x0.device, generator)
    if maskable is None:
        maskable = torch.ones_like(x0, dtype=torch.bool)
    if curriculum:
        at, a, da = gauss_schedule(t, K)
        w = gauss_latent(x0, at, K, generator=generator)
        w = torch.where(maskable[..., None], w, F.one_hot(x0, K).float() * 1e4)  # clean: a one-hot soft input
        z, inp = w.argmax(-1), F.softmax(w / tau, dim=-1)
    else:
        a, da = log_linear(t)
        z = torch.where(maskable, q_uniform(x0, a, K, generator), x0)
        inp = z
    return inp, x0, z, a, da, maskable


def loss(model, batch, reduce=True):
    """The NELBO of a batch from noise(), nats per maskable position: the batch mean, or each row's (B,)."""
    inp, x0, z, a, da, maskable = batch
    per_token = nelbo(model(inp, sigma=-a.log()), x0, z, a, da)
    per_row = (per_token * maskable).sum(1) / maskable.sum(1).clamp(min=1)
    return per_row.mean() if reduce else per_row


# -----------------------------------------------------------------------------
# Sampling

def posterior(p, z_t, alpha_t, alpha_s):
    """q(z_s | z_t, x) for s < t with x replaced by the model's distribution p (B, L, K), in float64:
    proportional to q(z_t | z_s) q(z_s | x) = [a_ts [j = z_t] + (1 - a_ts)/K] [alpha_s p_j + (1 - alpha_s)/K],
    a_ts = alpha_t / alpha_s; its normaliser is alpha_t p[z_t] + (1 - alpha_t)/K. alpha_t, alpha_s: floats."""
    K = p.size(-1)
    a_ts = alpha_t / alpha_s
    num = (a_ts * F.one_hot(z_t, K).double() + (1 - a_ts) / K) * (alpha_s * p.double() + (1 - alpha_s) / K)
    return num / num.sum(-1, keepdim=True)


def filter_top(p, top_k=0, top_p=1.0):
    """Keep the top_k most likely tokens and the smallest set with probability >= top_p, renormalised."""
    if top_k > 0:
        kth = p.topk(min(top_k, p.size(-1)), dim=-1).values[..., -1:]
        p = torch.where(p >= kth, p, 0.0)
    if top_p < 1.0:
        sp, idx = p.sort(dim=-1, descending=True)
        cum = sp.cumsum(-1)
        drop = cum - sp > top_p * cum[..., -1:]  # tokens after the set already reaches top_p
        p = p.scatter(-1, idx, sp.masked_fill(drop, 0.0))
    return p / p.sum(-1, keepdim=True)


@torch.no_grad()
def tail(model, x):
    """The greedy tail: the model reads x (B, T) as clean (t = 0, sigma = 0) and every position takes its
    most likely token (B, T). A model that trusted clean input would hand clean text back unchanged."""
    K = model.config.vocab_size - 1
    return model(x, sigma=torch.zeros(len(x), device=x.device))[..., :K].argmax(-1)


@torch.no_grad()
def generate(model, prompt, *, steps, gen_length, temperature=1.0, top_k=0, top_p=1.0, greedy_tail=True,
             eos_id=-1, pad=None, generator=None, on_step=None):
    """Ancestral sampling on the grid 1 = t_0 > ... > t_steps = 0. The canvas is the prompt (B, P), kept
    and seen clean, then gen_length positions; these and any [MASK] in the prompt (infilling) start as
    uniform random tokens and are all redrawn at every step from the posterior (float64 Gumbel-max).
    greedy_tail adds one forward on the finished canvas read as clean (t = 0) and takes its argmax:
    a last denoising pass that replaces the tokens the model finds out of place (Duo's noise removal,
    as in its reference sampler). eos_id is not used: Duo trains on token streams, whose vocabulary has
    no EOS. Returns (canvas (B, P + gen_length), NFE per row: steps + greedy_tail)."""
    if steps <= 0:
        raise ValueError(f"--steps={steps} must be positive")
    if pad is not None:
        raise ValueError("uniform-state diffusion samples prompts of one length (no left padding)")
    K, m = model.config.vocab_size - 1, model.config.mask_id
    x = torch.cat([prompt, prompt.new_full((prompt.size(0), gen_length), m)], 1)
    free = x == m  # (B, T) the positions the sampler writes
    x = torch.where(free, torch.randint(K, x.shape, device=x.device, generator=generator), x)
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)

    def predict(x, a_t):  # the model's distribution over clean tokens p (B, T, K), float64, filtered
        logits = model(x, sigma=torch.full((len(x),), -math.log(a_t), device=x.device))[..., :K].double()
        p = F.one_hot(logits.argmax(-1), K).double() if temperature == 0 else F.softmax(logits / temperature, -1)
        return filter_top(p, top_k, top_p)  # on the prediction, never on the posterior

    for i in range(steps + greedy_tail):
        if i < steps:
            a_t, a_s = log_linear(ts[i])[0].item(), log_linear(ts[i + 1])[0].item()
            new = add_gumbel_noise(posterior(predict(x, a_t), x, a_t, a_s).log(), 1.0, generator).argmax(-1)
        else:
            new = tail(model, x)
        changed = free & (new != x)
        x = torch.where(free, new, x)
        if on_step:
            on_step(x, changed)
    return x, steps + greedy_tail


# -----------------------------------------------------------------------------
# Discrete consistency distillation

def dcd_trajectory(x0, t, s, K, eps_noise):
    """z_t and z_s (B, L) on the deterministic trajectory of fixed x0 and Gaussian noise eps (B, L, K):
    argmax(at x + st eps) at both times (window schedule); t, s: (B,) with s <= t."""
    (at, _, _), (as_, _, _) = gauss_schedule(t, K), gauss_schedule(s, K)
    return gauss_latent(x0, at, K, eps_noise).argmax(-1), gauss_latent(x0, as_, K, eps_noise).argmax(-1)


def dcd_noise(x0, maskable, K, delta, generator=None):
    """A distillation batch: t ~ U(delta, 1) (antithetic), s = t - delta, one noise per token shared by
    both times. Returns (z_t, z_s, alpha_t, alpha_s, maskable); positions not maskable stay clean."""
    t = delta + (1 - delta) * sample_t(x0.size(0), 0.0, True, x0.device, generator)
    s = t - delta
    eps_noise = torch.randn(*x0.shape, K, device=x0.device, generator=generator)
    z_t, z_s = dcd_trajectory(x0, t, s, K, eps_noise)
    if maskable is None:
        maskable = torch.ones_like(x0, dtype=torch.bool)
    z_t, z_s = torch.where(maskable, z_t, x0), torch.where(maskable, z_s, x0)
    return z_t, z_s, gauss_schedule(t, K)[1], gauss_schedule(s, K)[1], maskable


def dcd_loss(student, teacher, batch, reduce=True):
    """KL(student at t || teacher at s) per maskable token, averaged per row (B,) or over the batch;
    the teacher, one step closer to the data on the same trajectory, gives no gradient."""
    z_t, z_s, a_t, a_s, maskable = batch
    K = student.config.vocab_size - 1
    log_q = F.log_softmax(student(z_t, sigma=-a_t.log())[..., :K].float(), -1)
    with torch.no_grad():
        log_p = F.log_softmax(teacher(z_s, sigma=-a_s.log())[..., :K].float(), -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, L)
    per_row = (kl * maskable).sum(1) / maskable.sum(1).clamp(min=1)
    return per_row.mean() if reduce else per_row


# -----------------------------------------------------------------------------
# The family interface: the names train.py, sample.py, eval.py and bench.py call (as diffusion.MDLM)

class Duo:
    """Uniform-state diffusion (Duo)."""
    flags = dict(causal=False, time_cond=True)  # the model it trains (GPTConfig): bidirectional, reads sigma
    row_extra = 0     # a training row is block_size tokens
    exact = False     # its held-out number is a bound on the NLL
    infills = True    # generate() also fills the [MASK]s inside a prompt
    converts = ()     # --init_from takes only checkpoints with its flags
    train_options = {  # the train.py options it reads: masked diffusion's t_eps and antithetic, and its curriculum
        **{k: diffusion.MDLM.train_options[k] for k in ("t_eps", "antithetic")},
        "curriculum_iters": (0, NON_NEGATIVE, "duo: the first this many steps read the Gaussian curriculum's soft input"),
        "tau": (1e-3, POSITIVE, "duo: the curriculum's softmax temperature")}
    model_options = ()
    sample_options = ("steps", "temperature", "top_k", "top_p", "greedy_tail")  # sample.SAMPLE_OPTIONS

    def __init__(self, config, meta, model):
        """The training side, for train.py's options (config) on a dataset with vocabulary meta."""
        self.config, self.K, self.saved = config, meta["vocab_size"] - 1, {}  # saved: modules to checkpoint (none)

    @staticmethod
    def check(config, meta, sft):
        """What Duo cannot train on, as ValueError: SFT records, a vocabulary whose [MASK] is not last."""
        if meta["mask_id"] != meta["vocab_size"] - 1:  # the K real tokens are the ids before [MASK]
            raise ValueError(f"--objective={config['objective']} needs [MASK] as the last id of the vocabulary "
                             f"({config['dataset']}'s is {meta['mask_id']} of {meta['vocab_size']})")
        if sft:
            raise ValueError(f"{config['dataset']} holds SFT records, which train objective=mdlm or ar")

    def noise(self, x0, maskable, generator, step, val):
        """The noise of a batch: the curriculum's soft input for its first steps, else (and for the val
        bound, always) the discrete process."""
        o = self.config  # train.py's options
        return noise(x0, maskable, self.K, curriculum=not val and step < o["curriculum_iters"], tau=o["tau"],
                     t_eps=o["t_eps"], antithetic=o["antithetic"], generator=generator)

    def loss(self, model, batch):
        return loss(model, batch)

    val_loss = loss

    def begin_step(self, step, model):
        """Called before every optimizer step (nothing to do)."""

    @staticmethod
    def nll(model, windows, scored, n_draws=8, seed=0, batch_size=64):
        """Held-out NLL bound per scored token of windows (N, T); scored: (T,) bool: the discrete NELBO plus
        the prior term. (mean, standard error). The draws are heavy-tailed near t = t_eps (a replaced token
        weighs ~K / (1 - alpha_t)): average over many windows or draws."""
        K = model.config.vocab_size - 1
        mean, se = diffusion.nll_bound(lambda x0, keep, g: loss(model, noise(x0, keep, K, generator=g), reduce=False),
                                       windows, scored, n_draws=n_draws, seed=seed, batch_size=batch_size)
        return mean + prior_kl(K), se

    generate = staticmethod(generate)

    @staticmethod
    def describe(greedy_tail=True, top_k=0, top_p=1.0, **_):
        return ("duo ancestral" + (", greedy tail" if greedy_tail else "") + (f", top_k {top_k}" if top_k else "")
                + (f", top_p {top_p}" if top_p < 1 else ""))


class DCD(Duo):
    """Duo's discrete consistency distillation: a Duo model that trains towards a teacher, samples and
    is evaluated as Duo. The teacher is the student copied at the start of every round."""
    train_options = {  # t_eps, antithetic: its val bound (Duo's)
        **{k: diffusion.MDLM.train_options[k] for k in ("t_eps", "antithetic")},
        "dcd_delta": (0.02, rule(lambda v: 0 < v < 1, "in (0, 1)"), "dcd: the teacher's time step in the first "
                                                                     "round; it doubles every round"),
        "dcd_round_iters": (200, POSITIVE, "dcd: steps per round; the teacher is the student copied at its start")}

    def __init__(self, config, meta, model):
        super().__init__(config, meta, model)
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.saved = {"teacher": self.teacher}  # checkpointed: a resumed round keeps its teacher

    @staticmethod
    def check(config, meta, sft):
        Duo.check(config, meta, sft)
        if config["init_from"] == "scratch":
            raise ValueError("--objective=dcd distils a trained Duo model: give it with --init_from=<out_dir of "
                             "objective=duo>")

    def noise(self, x0, maskable, generator, step, val):
        """A distillation batch; delta doubles every round (up to 1/2). The val bound is Duo's."""
        if val:
            return super().noise(x0, maskable, generator, step, val)
        o = self.config  # train.py's options
        return dcd_noise(x0, maskable, self.K, min(0.5, o["dcd_delta"] * 2 ** (step // o["dcd_round_iters"])),
                         generator)

    def loss(self, model, batch):
        return dcd_loss(model, self.teacher, batch)

    val_loss = Duo.loss

    def begin_step(self, step, model):
        """A new round: the teacher is the student now."""
        if step % self.config["dcd_round_iters"] == 0:
            self.teacher.load_state_dict(model.state_dict())
