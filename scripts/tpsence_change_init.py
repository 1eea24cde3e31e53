"""Make an `init` folder that switches a trained residual TPSeNCE generator to another `change` (issue 15).

    python scripts/tpsence_change_init.py SOURCE OUT --change tone

SOURCE is a run folder or a shipped card's folder (`generator.safetensors`, `networks.safetensors`,
`generator.json`, as `rainkit train tpsence` writes them). OUT gets the same three files, but with the
generator's last convolution zeroed and its `change` set: a residual generator is then the identity again
(`rainkit.models.tpsence.init_generator` starts one so), keeping what the encoder, the residual blocks and the
decoder learned and what D and the MLP heads learned; only the last layer, which reads the decoder's features
as the new change (an RGB residual or tone maps), starts over. The card keeps the earlier sessions, so the
next run's card counts every step that shaped these weights. Then:

    rainkit train tpsence ... --init OUT --set change=tone --set residual=true --set epoch_offset=N
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from torch import nn

    from rainkit.hub.checkpoint import ARCH_KEY, KWARGS_KEY, read_metadata, read_state_dict
    from rainkit.hub.weights import sha256_file
    from rainkit.io.atomic import atomic_save_safetensors, atomic_write_text
    from rainkit.models.tpsence import CHANGES, ResnetGenerator
    from rainkit.train.tpsence import CARD, GENERATOR, NETWORKS_FILE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--change", choices=CHANGES, required=True)
    args = parser.parse_args()

    metadata = read_metadata(args.source / GENERATOR)
    kwargs = {**json.loads(metadata[KWARGS_KEY]), "change": args.change}
    if not kwargs.get("residual"):
        sys.exit(f"{args.source / GENERATOR}: not a residual generator; `change` needs one")
    state = read_state_dict(args.source / GENERATOR)
    generator = ResnetGenerator(**kwargs)
    generator.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    last = [m for m in generator.model if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    dtype = next(iter(state.values())).dtype
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(args.out / GENERATOR, {k: v.to(dtype) for k, v in generator.state_dict().items()},
                            {**metadata, ARCH_KEY: metadata[ARCH_KEY], KWARGS_KEY: json.dumps(kwargs, sort_keys=True)})
    shutil.copyfile(args.source / NETWORKS_FILE, args.out / NETWORKS_FILE)
    card = json.loads((args.source / CARD).read_text())
    card.update(arch_kwargs=kwargs, sha256=sha256_file(args.out / GENERATOR),
                derived={"from": str(args.source), "from_sha256": sha256_file(args.source / GENERATOR),
                         "how": f"last convolution zeroed, change={args.change}"})
    atomic_write_text(args.out / CARD, json.dumps(card, indent=2) + "\n")
    print(f"{args.out}: {args.change} generator, identity at this init; sessions kept: "
          f"{len(card.get('sessions', []))}, {card.get('total_steps', '?')} steps")


if __name__ == "__main__":
    main()
