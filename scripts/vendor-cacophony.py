#!/usr/bin/env python3
"""Extracts the cacophony test vectors for vitalwire's eight profile/suite pairs from the
copy that ships inside the snow crate (tests/vectors/cacophony.txt) and writes them to
crates/vitalwire/tests/data/cacophony.json. Run after `cargo fetch`."""
import glob, json, os, sys

WANTED = [f"Noise_{p}_{s}" for p in ("XX", "IK", "KK", "XXpsk3")
          for s in ("25519_ChaChaPoly_BLAKE2s", "25519_AESGCM_SHA256")]

home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
paths = sorted(glob.glob(f"{home}/registry/src/*/snow-0.10.*/tests/vectors/cacophony.txt"))
if not paths:
    sys.exit("snow 0.10 sources not found: run `cargo fetch` first")
vectors = json.load(open(paths[-1]))["vectors"]
picked = [v for v in vectors if v["protocol_name"] in WANTED]
assert sorted(v["protocol_name"] for v in picked) == sorted(WANTED), "missing a vector"
out = {
    "source": "cacophony test vectors (https://github.com/haskell-cryptography/cacophony, "
              "public domain), as shipped in the snow 0.10 crate at tests/vectors/cacophony.txt",
    "vectors": picked,
}
dest = os.path.join(os.path.dirname(__file__), "..", "crates/vitalwire/tests/data/cacophony.json")
with open(dest, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(f"wrote {len(picked)} vectors to {os.path.normpath(dest)}")
