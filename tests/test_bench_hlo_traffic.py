"""The HLO traffic model: kernels and bytes counted from compiled programs."""

import jax
import jax.numpy as jnp
import pytest

from stam_optimizer.benchmarks.measure import hlo_traffic

HAND_WRITTEN = """HloModule m

%fused (p0: f32[8], p1: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[8]{0} parameter(1)
  ROOT %add = f32[8]{0} add(%p0, %p1)
}

%body (t: (s32[], u8[4,2])) -> (s32[], u8[4,2]) {
  %t = (s32[], u8[4,2]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %c = u8[4,2]{1,0} get-tuple-element(%t), index=1
  %n = u8[4,2]{1,0} fusion(%c), kind=kLoop, calls=%fused
  ROOT %r = (s32[], u8[4,2]{1,0}) tuple(%i, %n)
}

ENTRY %main (a: f32[8], b: f32[8], q: u8[4,2]) -> (f32[8], bf16[2,3]) {
  %a = f32[8]{0} parameter(0)
  %b = f32[8]{0} parameter(1)
  %q = u8[4,2]{1,0} parameter(2)
  %zero = s32[] constant(0)
  %s = f32[8]{0} fusion(%a, %b), kind=kLoop, calls=%fused
  %bc = f32[2,4]{1,0} bitcast(%s)
  %red = f32[] fusion(%bc), kind=kCustom, calls=%fused
  %cp = bf16[2,3]{1,0} copy(%red)
  %tup = (s32[], u8[4,2]{1,0}) tuple(%zero, %q)
  %w = (s32[], u8[4,2]{1,0}) while(%tup), condition=%fused, body=%body
  %k = (f32[8]{0}, f32[8]{0}) conditional(%zero, %a, %b), branch_computations={%fused, %fused}
  ROOT %out = (f32[8]{0}, bf16[2,3]{1,0}) tuple(%s, %cp)
}
"""


def test_type_bytes():
    assert hlo_traffic.type_bytes("f32[3,4]{1,0}") == 48
    assert hlo_traffic.type_bytes("(s32[], u8[4,2]{1,0}, bf16[5])") == 4 + 8 + 10
    assert hlo_traffic.type_bytes("token[]") == 0


def test_hand_written_module_is_counted_by_hand():
    t = hlo_traffic.traffic(HAND_WRITTEN)
    # add fusion: 32 + 32 in, 32 out; reduction: 32 in (through the bitcast), 4 out;
    # copy: 4 in, 12 out; the while body once: 8 in, 8 out; conditional skipped.
    assert t["bytes"] == (32 + 32 + 32) + (32 + 4) + (4 + 12) + (8 + 8)
    assert t["by_op"] == {"fusion:kLoop": 2, "fusion:kCustom": 1, "copy": 1}
    assert t["kernels"] == 4


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="ENTRY"):
        hlo_traffic.traffic("HloModule m\n")


def test_compiled_elementwise_program_moves_its_operands_once():
    n = 1 << 16
    f = jax.jit(lambda x, y: x * 2.0 + y, donate_argnums=0)
    x = jnp.ones((n,), jnp.float32)
    text = f.lower(x, x).compile().as_text()
    t = hlo_traffic.traffic(text)
    assert t["kernels"] == 1
    assert t["bytes"] == 3 * 4 * n  # read x and y, write the result
