"""What the `vast` tests share: the API key the fake Vast expects, the offers it serves, a free local port, and
the check that the key reached no output or file (the fixtures `fake` and `box_env` are conftest.py's)."""

from __future__ import annotations

import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "tests" / "spaces"
KEY = "vk-0123456789abcdef-SECRET"

OFFERS = [
    {"id": 11, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.35, "reliability2": 0.99, "disk_space": 80.0,
     "gpu_ram": 24564, "rentable": True, "rented": False, "verified": True, "geolocation": "Norway"},
    {"id": 12, "gpu_name": "RTX 4090", "num_gpus": 2, "dph_total": 0.71, "reliability2": 0.995, "disk_space": 120.0,
     "gpu_ram": 24564, "rentable": True, "rented": False, "verified": True, "geolocation": "Canada"},
    {"id": 13, "gpu_name": "H100 SXM", "num_gpus": 1, "dph_total": 2.10, "reliability2": 0.999, "disk_space": 200.0,
     "gpu_ram": 81559, "rentable": True, "rented": False, "verified": True, "geolocation": "US"},
    {"id": 14, "gpu_name": "RTX 3090", "num_gpus": 1, "dph_total": 0.15, "reliability2": 0.80, "disk_space": 40.0,
     "gpu_ram": 24576, "rentable": True, "rented": False, "verified": True, "geolocation": "Vietnam"},
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_key_nowhere(*texts: str, dirs: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert KEY not in text
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert KEY.encode() not in p.read_bytes(), p
