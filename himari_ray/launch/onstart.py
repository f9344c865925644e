"""The on-start script a Vast instance runs when its container starts.

It installs himari-ray, starts a single-node Ray bound to loopback with token authentication (a token made on the box,
kept in ~/.ray/auth_token and never logged; the dashboard on 127.0.0.1), waits until the study proxy
answers on the box's loopback (the SSH reverse tunnel `up` opens once the box is ready), then runs the
search into the user's study. Progress goes to ~/himari/phase, read over SSH:
`installing` -> `starting-ray` -> `ready` -> `searching` -> `done <exit code>` (or `failed <step>`).
"""

from __future__ import annotations

import base64
import shlex

from himari_ray.launch.box import BOX_DIR

_SCRIPT = """#!/bin/bash
# himari-ray on-start for {label}
mkdir -p ~/{box} && cd ~/{box}
exec >>~/{box}/onstart.log 2>&1
phase() {{ echo "$1" > ~/{box}/phase.tmp && mv ~/{box}/phase.tmp ~/{box}/phase; }}
phase installing
{install} || {{ phase "failed install"; exit 1; }}
export RAY_AUTH_MODE=token
ray get-auth-token --generate >/dev/null 2>&1 && chmod 600 ~/.ray/auth_token || {{ phase "failed token"; exit 1; }}
phase starting-ray
ray start --head --node-ip-address=127.0.0.1 --port={ray_port} --dashboard-host=127.0.0.1 --disable-usage-stats --block >~/{box}/ray.log 2>&1 &
for i in $(seq 1 120); do (exec 3<>/dev/tcp/127.0.0.1/{ray_port}) 2>/dev/null && break; sleep 1; done
(exec 3<>/dev/tcp/127.0.0.1/{ray_port}) 2>/dev/null || {{ phase "failed ray"; exit 1; }}
phase ready
for i in $(seq 1 {proxy_wait}); do (exec 3<>/dev/tcp/127.0.0.1/{proxy_port}) 2>/dev/null && break; sleep 1; done
phase searching
echo {space_b64} | base64 -d > ~/{box}/space.yaml
himari-ray search ~/{box}/space.yaml --trials {trials} --seed {seed} --out ~/{box}/runs/{label} \\
  --storage grpc://127.0.0.1:{proxy_port} --address 127.0.0.1:{ray_port} >~/{box}/search.log 2>&1
phase "done $?"
"""


def onstart_script(
    label: str,
    space_yaml: str,
    trials: int,
    seed: int,
    install: str,
    ray_port: int = 6379,
    proxy_port: int = 13000,
    proxy_wait_s: int = 600,
) -> str:
    return _SCRIPT.format(
        label=shlex.quote(label),
        box=BOX_DIR,
        install=install,
        ray_port=int(ray_port),
        proxy_port=int(proxy_port),
        proxy_wait=int(proxy_wait_s),
        space_b64=base64.b64encode(space_yaml.encode()).decode(),
        trials=int(trials),
        seed=int(seed),
    )


def run_dir(label: str) -> str:
    """The box's search output directory (relative to its home); unique per instance, so each box's search
    owns its own trials in the shared study."""
    return f"{BOX_DIR}/runs/{label}"
