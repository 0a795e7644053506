"""Parity with the official PyTorch MAE: mask, ids_restore, latent, pred, loss and every gradient."""

import glob

import numpy as np
import pytest

from conftest import FIXTURES
from mim_jax.interop import parity
from mim_jax.interop.official_mae import from_official, to_official

FILES = sorted(glob.glob(str(FIXTURES / '*.npz')))
NAMES = ['mae_official_tiny_normpix.npz', 'mae_official_tiny_pix.npz']


def test_the_fixtures_are_in_the_repository():
  assert sorted(p.rsplit('/', 1)[-1] for p in FILES) == NAMES, f'missing official MAE fixtures under {FIXTURES}'


@pytest.mark.parametrize('name', NAMES)
def test_parity_with_official_fixture(name):
  checks = parity.check_file(str(FIXTURES / name))
  names = {c.name for c in checks}
  for required in ('mask', 'ids_restore', 'loss', 'latent', 'pred', 'grad/patch_embed.proj.weight',
                   'grad/blocks.0.attn.qkv.weight', 'grad/decoder_pred.weight', 'grad/cls_token', 'grad/mask_token'):
    assert required in names
  bad = [f'{c.name}: {c.max_abs:.3e} > {c.tolerance:.3e}' for c in checks if not c.ok]
  assert not bad, bad


def test_parity_cli_exit_codes(tmp_path):
  assert parity.main(FILES[:1]) == 0
  # A corrupted prediction must make the command fail.
  z = dict(np.load(FILES[0], allow_pickle=False))
  z['pred'] = z['pred'] + 1e-2
  bad = tmp_path / 'bad.npz'
  np.savez(bad, **z)
  assert parity.main([str(bad)]) == 1


def test_official_state_dict_round_trip():
  fx = parity.load_fixture(FILES[0])
  params = from_official(fx['params'])
  p = int(fx['config']['patch_size'])
  side = int(fx['config']['img_size']) // p
  back = to_official(params, patch_size=p, grid_hw=(side, side))
  assert sorted(back) == sorted(fx['params'])
  for k, v in fx['params'].items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
