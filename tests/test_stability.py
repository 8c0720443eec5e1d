"""Numerical stability sweep: every schedule x T in {1, 2, 10, 1000, 4000} x float32/float64 x
every model mean type x every variance type x both decoders.

For each combination every buffer, every training-loss term, every bound term (at every
timestep at once: the batch holds one example per t, so t = 0 and t = T-1 are always in it),
the prior term and one step of every sampler are finite, with data at the edges of its range
(-1 and +1, the ends of an image's range, and 3, a far point of a 2-D set), noise at 4 standard
deviations and model outputs at the edges of theirs (eps = 3, x0 at the far end, the learned
variance at beta~_t or at beta_t). Short chains also run every sampler and the bound loop
end to end. The whole sweep runs with NumPy's floating-point warnings turned into errors,
so an overflow that happens to round to a finite number is caught too.
"""
import itertools

import numpy as np
import pytest

from tinydiff.diffusion import MODEL_MEAN_TYPES, MODEL_VAR_TYPES, GaussianDiffusion
from tinydiff.samplers import ddim_sample_loop, ddim_step, ddpm_sample_loop, langevin_sample_loop, langevin_step
from tinydiff.schedules import cosine_beta_schedule, linear_beta_schedule, logsnr_beta_schedule

SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule, "logsnr": logsnr_beta_schedule}
TS = [1, 2, 10, 1000, 4000]
EDGES = (-1.0, 1.0, 3.0)


def edge_model(diffusion, edge):
    """A model whose outputs sit at the edges of what each parametrisation can ask for."""
    mean_type, var_type = diffusion.model_mean_type, diffusion.model_var_type

    def model(x, t):
        x = np.asarray(x)
        pred = {"eps": np.full_like(x, 3.0), "x0": np.full_like(x, -edge), "v": np.full_like(x, -3.0),
                "mean": x * 1.0}[mean_type]
        if var_type == "learned_range":                  # v_raw = +-1: sigma^2 = beta_t or beta~_t
            return np.concatenate([pred, np.full_like(x, 1.0 if edge > 0 else -1.0)], axis=1)
        if var_type == "learned":                        # log sigma^2 at either end of that range
            table = diffusion.log_betas if edge > 0 else diffusion.posterior_log_variance_clipped
            return np.concatenate([pred, np.broadcast_to(table[t][:, None], x.shape).astype(x.dtype)], axis=1)
        return pred
    return model


def assert_finite(where, **values):
    for name, value in values.items():
        value = np.asarray(value)
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1) if value.ndim else ~np.isfinite(value)
        assert not bad.any(), f"{where}: {name} is not finite at rows {np.flatnonzero(bad)[:5].tolist()}"


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_buffer_term_and_step_is_finite(schedule, T):
    betas = SCHEDULES[schedule](T)
    with np.errstate(all="raise"):
        for dtype, mean_type, var_type, decoder in itertools.product((np.float32, np.float64), MODEL_MEAN_TYPES,
                                                                     MODEL_VAR_TYPES, ("continuous", "discretized")):
            loss_type = "hybrid" if var_type.startswith("learned") else "mse"
            d = GaussianDiffusion(betas, model_mean_type=mean_type, model_var_type=var_type, loss_type=loss_type,
                                  decoder_nll=decoder)
            assert_finite(f"{schedule} T={T} buffers", **{k: v for k, v in vars(d).items()
                                                         if isinstance(v, np.ndarray) and v.dtype.kind == "f"})
            t = np.arange(T)                                                  # one example per timestep
            for edge in EDGES if decoder == "continuous" else (-1.0, 1.0):        # 8-bit images live in [-1, 1]
                where = f"{schedule} T={T} {np.dtype(dtype).name} {mean_type}/{var_type}/{decoder} x0={edge}"
                model = edge_model(d, edge)
                x0 = np.full((T, 2), edge, dtype)
                noise = np.full((T, 2), 4.0, dtype)
                x_t = d.q_sample(x0, t, noise=noise)
                terms = d.training_losses(model, x0, t, noise=noise)
                vb = d.vb_terms_bpd(model(x_t, t), x0, x_t, t)["output"]
                steps = {"p_sample": d.p_sample(model, x_t, t, noise=noise)["sample"],
                         "ddim_step": ddim_step(d, model, x_t, t, eta=1.0, noise=noise)["sample"]}
                if mean_type == "eps":
                    steps["langevin_step"] = langevin_step(d, model, x_t, t, 1e-6, noise=noise)[0]
                assert_finite(where, x_t=x_t, vb_terms_bpd=vb, prior=d.prior_bpd(x0), **terms, **steps)
                for value in (x_t, vb, *terms.values(), *steps.values()):
                    assert np.asarray(value).dtype == dtype, where           # float32 stays float32


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_whole_chains_and_the_bound_loop_are_finite(schedule, T):
    """Every sampler end to end (all steps for short chains, 10 respaced steps for long ones) and the
    bound loop (every term for short chains, a stratified 10 for long ones), float32, data at +-1."""
    rng = np.random.default_rng(0)
    steps = None if T <= 10 else 10
    with np.errstate(all="raise"):
        for mean_type, var_type in itertools.product(MODEL_MEAN_TYPES, MODEL_VAR_TYPES):
            loss_type = "hybrid" if var_type.startswith("learned") else "mse"
            d = GaussianDiffusion(SCHEDULES[schedule](T), model_mean_type=mean_type, model_var_type=var_type,
                                  loss_type=loss_type)
            model = edge_model(d, 1.0)
            where = f"{schedule} T={T} {mean_type}/{var_type}"
            x0 = np.tile(np.array([[-1.0, 1.0]], np.float32), (4, 1))
            bound = d.calc_bpd_loop(model, x0, rng=rng, num_timesteps=None if T <= 10 else 10)
            samples = {"ddpm": ddpm_sample_loop(d, model, (4, 2), rng, steps=steps),
                       "ddim": ddim_sample_loop(d, model, (4, 2), rng, steps=steps)}
            if mean_type == "eps":
                samples["langevin"] = langevin_sample_loop(d, model, (4, 2), rng, steps=steps, n_steps_each=2,
                                                           step_lr=1e-6)
            assert_finite(where, **{k: v for k, v in bound.items() if k not in ("t", "weights")}, **samples)
