"""Check that the row-max sweeps of the installed lsref._kernel are vectorised.

objdump the extension and count, in each lsref_max_f32/f64_<set> function, the packed max
instructions of the set's vector width (generic: maxps/maxpd on xmm, avx2: ymm, avx512: zmm).
Prints one line per function; exits 1 when one of them has none (a compiler that left the loop
scalar). x86-64 with objdump only; elsewhere it says so and exits 0.

    python3 .ci/max_vectorised.py      (run outside the source tree, in the build's venv)
"""
import platform
import re
import shutil
import subprocess
import sys

WIDTH = {"generic": "xmm", "avx2": "ymm", "avx2i": "ymm", "avx512": "zmm"}


def main():
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("objdump"):
        print("max sweeps: not checked (needs x86-64 and objdump)")
        return 0
    from lsref import _kernel
    so = _kernel.__file__
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", so], capture_output=True,
                         text=True, check=True).stdout
    counts, name = {}, None
    for line in asm.splitlines():
        head = re.match(r"^[0-9a-f]+ <(lsref_max_f(?:32|64)_(\w+?))(?:\.\w+)*>:$", line)
        if head:
            name = head.group(1)
            counts[name] = {"set": head.group(2), "packed": 0, "scalar": 0}
            continue
        if re.match(r"^[0-9a-f]+ <", line):
            name = None
        if name is None:
            continue
        ins = re.search(r"\t(v?max(p|s)[sd])\s+(\S+)", line)
        if ins:
            c = counts[name]
            if ins.group(2) == "p" and WIDTH.get(c["set"], "?") in ins.group(3):
                c["packed"] += 1
            elif ins.group(2) == "s":
                c["scalar"] += 1
    expected = {f"lsref_max_f{b}_{s}" for b in (32, 64) for s in ("generic", "avx2", "avx512")}
    expected.discard("lsref_max_f32_avx2")      # replaced by the intrinsics' lsref_max_f32_avx2i
    bad = []
    print(f"max sweeps in {so} ({_kernel.COMPILER.strip()}):")
    for fn in sorted(set(counts) | expected):
        c = counts.get(fn)
        if c is None:
            print(f"  {fn:24s} missing")
            bad.append(fn)
            continue
        width = WIDTH.get(c["set"], "?")
        print(f"  {fn:24s} {c['packed']:3d} packed max on {width}, {c['scalar']:3d} scalar")
        if c["packed"] == 0:
            bad.append(fn)
    if bad:
        print(f"NOT VECTORISED: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
