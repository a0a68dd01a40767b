"""Hostile checkpoints against --device cuda: a copy of a gpu_* fixture with (1) the safetensors header length 4
bytes short, (2) a NaN in one weight. Each must exit 1 with one line on stderr naming the problem."""
import json, os, shutil, struct, subprocess, sys, tempfile
src, binary = sys.argv[1], sys.argv[2]
ok = True
def case(name, mutate):
    global ok
    d = tempfile.mkdtemp()
    dst = os.path.join(d, "ck")
    shutil.copytree(src, dst)
    st = os.path.join(dst, "model.safetensors")
    with open(st, "r+b") as f:
        mutate(f)
    r = subprocess.run([binary, dst, "--device", "cuda", "--tokens", "1,2,3", "--max-new", "2"], capture_output=True, text=True)
    err = r.stderr.strip().splitlines()
    good = r.returncode == 1 and len(err) == 1
    ok &= good
    print(f"{name}: exit {r.returncode}, stderr {err!r}: {'REFUSED as promised' if good else 'NOT REFUSED'}")
def short_header(f):
    n = struct.unpack("<Q", f.read(8))[0]
    f.seek(0); f.write(struct.pack("<Q", n - 4))
def nan_weight(f):
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
    name = next(k for k in hdr if k.endswith("post_attention_layernorm.weight"))
    t = hdr[name]
    f.seek(8 + n + t["data_offsets"][0])
    f.write({"F32": b"\x00\x00\xc0\x7f", "BF16": b"\xc0\x7f", "F16": b"\x00\x7e"}[t["dtype"]])
case("header length 4 short", short_header)
case("NaN in a norm weight", nan_weight)
sys.exit(0 if ok else 1)
