"""Runs INSIDE a separate virtualenv with sae-lens installed (never imports sae_tutorial).

  python saelens_io.py write OUTDIR   # build tiny SAEs with sae-lens, save them with sae-lens's own save_model,
                                      # and record sae-lens's outputs on fixed inputs (OUTDIR/<name>/io.safetensors)
  python saelens_io.py both OUTDIR INDIR   # both of the above in one process (sae-lens imports slowly)
  python saelens_io.py read INDIR     # open every INDIR/<name> (written by sae_tutorial's save_saelens) with
                                      # sae-lens's SAE.load_from_disk, run it on INDIR/<name>/x.safetensors and write
                                      # INDIR/<name>/saelens_out.safetensors

The environment: benchmarks/other_tools/setup.sh (sae-lens 6.x, TransformerLens < 4). Prints one JSON line.
"""
import json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import save_file, load_file
import sae_lens
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig

D_IN, D_SAE, N = 8, 16, 16


def _meta():
    return SAEMetadata(hook_name="blocks.3.hook_resid_post", model_name="fixture-model", context_size=128)


def _specs():
    "name -> an inference SAE built by sae-lens (weights randomised below)."
    kw = dict(d_in=D_IN, d_sae=D_SAE)
    return {
        "standard": StandardSAE(StandardSAEConfig(**kw, metadata=_meta())),
        "topk": TopKSAE(TopKSAEConfig(**kw, k=4, metadata=_meta())),
        "topk_rescaled": TopKSAE(TopKSAEConfig(**kw, k=4, rescale_acts_by_decoder_norm=True, metadata=_meta())),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(**kw, metadata=_meta())),
        "jumprelu_no_bdec_input": JumpReLUSAE(JumpReLUSAEConfig(**kw, apply_b_dec_to_input=False, metadata=_meta())),
        "gated": GatedSAE(GatedSAEConfig(**kw, metadata=_meta())),
    }


@torch.no_grad()
def write(out: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g)
    done = {}
    for name, sae in _specs().items():
        for pname, p in sae.named_parameters():     # non-trivial weights: every parameter matters
            if pname == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.6)
                p[0] = 0.0                           # a zero threshold (θ = 0, log θ = -inf on our side)
            elif pname == "W_dec":
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 + torch.rand(p.shape[0], 1, generator=g)))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 2 else 0.3))
        sae.save_model(out/name)
        sae.eval()
        feature_acts = sae.encode(x)
        sae_out = sae(x)
        save_file({"x": x.contiguous(), "feature_acts": feature_acts.contiguous(), "sae_out": sae_out.contiguous()},
                  str(out/name/"io.safetensors"))
        done[name] = {"class": type(sae).__name__, "l0": float((feature_acts > 0).float().sum(-1).mean())}
    return done


@torch.no_grad()
def read(root: Path) -> dict:
    done = {}
    for d in sorted(p for p in root.iterdir() if (p/"cfg.json").exists()):
        sae = SAE.load_from_disk(str(d), device="cpu")
        sae.eval()
        x = load_file(str(d/"x.safetensors"))["x"].to(sae.dtype)
        save_file({"feature_acts": sae.encode(x).contiguous(), "sae_out": sae(x).contiguous()},
                  str(d/"saelens_out.safetensors"))
        done[d.name] = {"class": type(sae).__name__, "hook_name": sae.cfg.metadata.hook_name,
                        "dtype": str(sae.dtype)}
    return done


if __name__ == "__main__":
    cmd, path = sys.argv[1], Path(sys.argv[2])
    if cmd == "write": res = {"written": write(path)}
    elif cmd == "read": res = {"read": read(path)}
    elif cmd == "both": res = {"written": write(path), "read": read(Path(sys.argv[3]))}
    else: sys.exit(f"unknown command {cmd!r}; use write, read or both")
    print(json.dumps({"sae_lens": sae_lens.__version__, "torch": torch.__version__, **res}))
