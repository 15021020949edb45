"""Tests for sslx.models: ResNet encoders, MLP heads and create_encoder.

Compilation dominates on CPU, so architecture-level facts (shapes, parameter
counts) are checked with jax.eval_shape, which traces without compiling or
allocating, and numerical behaviour on resnet10 / tiny widths and inputs,
compiled once per function and shared through module-scoped fixtures.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sslx.config import defaults as config_defaults
from sslx import errors
from sslx import models
from sslx.models import resnet

# torchvision's parameter counts minus the fc layer (512*1000+1000 for basic
# blocks, 2048*1000+1000 for bottlenecks).
TORCHVISION_PARAMS_NO_FC = {
    'resnet18': 11_689_512 - 513_000,  # 11,176,512
    'resnet34': 21_797_672 - 513_000,
    'resnet50': 25_557_032 - 2_049_000,  # 23,508,032
    'resnet101': 44_549_160 - 2_049_000,
    'resnet152': 60_192_808 - 2_049_000,
}
# Input sizes that exercise each stem at its intended scale.
STEM_IMAGE_SIZE = {'cifar': 32, 'imagenet': 64}
# Spatial side after the last stage: CIFAR stem 32 -> 32,16,8,4; ImageNet stem
# 64 -> 32 (conv) -> 16 (pool) -> 16,8,4,2.
STEM_FINAL_SIDE = {'cifar': 4, 'imagenet': 2}

# XLA's CPU backend optimisations (LLVM -O2) make compiling a network's random
# initialisers take 10-20 s; at -O0 it is ~4x faster, and the tiny inputs here
# make the slower generated code irrelevant.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _images(batch, size, seed=0):
  # numpy, not jax.random: each new shape would compile a threefry kernel.
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32))


def _abstract_init(model, size, batch=2):
  """Variables and output shapes of model, without compiling anything."""
  def init():
    out, state = model.init_with_output(
        jax.random.key(0), jnp.zeros((batch, size, size, 3)), train=False,
        capture_intermediates=True)
    return _pooled(out), state
  return jax.eval_shape(init)


def _pooled(out):
  """Backbones return BackboneOutput; most tests look at the pooled features (MLPs: arrays)."""
  return out.pooled if isinstance(out, models.BackboneOutput) else out


def _num_params(variables):
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def _model_config(**overrides):
  cfg = config_defaults.base_config().model
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope='module')
def tiny():
  """A resnet10 at width 1/4 with initialised variables (32px CIFAR stem)."""
  model = models.resnet10(width=0.25)
  variables = _jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      _images(2, 32))
  return model, variables


@pytest.fixture(scope='module')
def tiny_apply(tiny):
  """Jitted train- and eval-mode forward passes of the tiny model."""
  model, _ = tiny
  def train_fn(v, x):
    out, state = model.apply(v, x, train=True, mutable=['batch_stats'])
    return out.pooled, state
  train = _jit(train_fn)
  evaluate = _jit(lambda v, x: model.apply(v, x, train=False).pooled)
  return train, evaluate


# ----------------------------------------------------------------- shapes ---


@pytest.mark.parametrize('name', sorted(resnet.VARIANTS))
@pytest.mark.parametrize('stem', ['cifar', 'imagenet'])
def test_output_shape_every_variant(name, stem):
  model = resnet.VARIANTS[name](stem=stem, width=0.5)
  size = STEM_IMAGE_SIZE[stem]
  (out, state) = _abstract_init(model, size, batch=3)
  chex.assert_shape(out, (3, model.feature_dim))
  assert out.dtype == jnp.float32
  last_stage = max(k for k in state['intermediates'] if k.startswith('stage4'))
  side = STEM_FINAL_SIDE[stem]
  chex.assert_shape(state['intermediates'][last_stage]['__call__'][0],
                    (3, side, side, model.feature_dim))


def test_forward_cifar_stem(tiny, tiny_apply):
  model, variables = tiny
  out, _ = tiny_apply[0](variables, _images(4, 32))
  chex.assert_shape(out, (4, 128))
  chex.assert_tree_all_finite(out)
  assert out.dtype == jnp.float32
  chex.assert_shape(variables['params']['stem_conv']['kernel'], (3, 3, 3, 16))
  assert model.feature_dim == 128


def test_forward_imagenet_stem():
  model = models.resnet10(stem='imagenet', width=0.125)
  out, variables = _jit(lambda x: model.init_with_output(
      jax.random.key(0), x, train=False))(_images(2, 64))
  out = out.pooled
  chex.assert_shape(out, (2, 64))
  chex.assert_tree_all_finite(out)
  chex.assert_shape(variables['params']['stem_conv']['kernel'], (7, 7, 3, 8))


def test_module_names_are_stable():
  (_, variables) = _abstract_init(models.resnet18(), 32)
  params = variables['params']
  expected = {'stem_conv', 'stem_bn'} | {
      f'stage{i}_block{j}' for i in range(1, 5) for j in range(2)}
  assert set(params) == expected
  assert set(params['stage2_block0']) == {
      'conv1', 'bn1', 'conv2', 'bn2', 'shortcut_conv', 'shortcut_bn'}
  assert set(params['stage1_block1']) == {'conv1', 'bn1', 'conv2', 'bn2'}
  (_, variables) = _abstract_init(models.resnet50(width=0.25), 32)
  assert set(variables['params']['stage1_block0']) == {
      'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'shortcut_conv',
      'shortcut_bn'}
  # v1.5: the stride sits on the 3x3 conv of the bottleneck.
  block = variables['intermediates']['stage2_block0']
  chex.assert_shape(block['conv1']['__call__'][0], (2, 32, 32, 32))
  chex.assert_shape(block['conv2']['__call__'][0], (2, 16, 16, 32))


# ------------------------------------------------------- parameter counts ---


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS_NO_FC))
def test_param_count_matches_torchvision(name):
  (_, variables) = _abstract_init(resnet.VARIANTS[name](stem='imagenet'), 64)
  assert _num_params(variables) == TORCHVISION_PARAMS_NO_FC[name]


def test_param_count_named_numbers():
  assert TORCHVISION_PARAMS_NO_FC['resnet18'] == 11_176_512
  assert TORCHVISION_PARAMS_NO_FC['resnet50'] == 23_508_032


def test_cifar_stem_only_changes_the_first_conv():
  (_, variables) = _abstract_init(models.resnet18(stem='cifar'), 32)
  # 7x7x3x64 kernel replaced by 3x3x3x64.
  assert _num_params(variables) == (
      TORCHVISION_PARAMS_NO_FC['resnet18'] - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_half_width_has_about_a_quarter_of_the_params(name):
  full = _num_params(_abstract_init(resnet.VARIANTS[name](), 32)[1])
  half = _num_params(_abstract_init(resnet.VARIANTS[name](width=0.5), 32)[1])
  assert 0.22 < half / full < 0.28


def test_feature_dim_without_init():
  assert models.resnet18().feature_dim == 512
  assert models.resnet34(width=2.0).feature_dim == 1024
  assert models.resnet50().feature_dim == 2048
  assert models.resnet50(width=0.5).feature_dim == 1024
  assert models.resnet10(width=0.001).feature_dim == 1  # clamped to >= 1
  assert resnet.scaled_channels(64, 0.3) == 19


# ------------------------------------------------------------------ dtype ---


def test_bfloat16_compute_float32_params_and_features(tiny, tiny_apply):
  model32, variables = tiny
  model16 = models.resnet10(width=0.25, dtype=jnp.bfloat16)
  x = _images(4, 32, seed=1)  # batch 4: reuses the compiled float32 forward
  init16 = jax.eval_shape(lambda: model16.init(jax.random.key(0), x,
                                               train=False))
  for leaf in jax.tree.leaves(init16):
    assert leaf.dtype == jnp.float32

  # Same float32 parameters through both compute dtypes.
  out16, stats16 = _jit(lambda v, x: model16.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, x)
  out16 = out16.pooled
  out32, _ = tiny_apply[0](variables, x)
  assert out16.dtype == jnp.float32
  for leaf in jax.tree.leaves(stats16):
    assert leaf.dtype == jnp.float32
  rel = jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32)
  assert rel < 0.02, rel  # measured ~0.005
  # bfloat16 really was used: the outputs are not bit-identical.
  assert rel > 0


# -------------------------------------------------------------- batchnorm ---


def test_train_mode_updates_batch_stats(tiny, tiny_apply):
  _, variables = tiny
  train, _ = tiny_apply
  _, new_state = train(variables, _images(4, 32))
  old_mean = variables['batch_stats']['stem_bn']['mean']
  new_mean = new_state['batch_stats']['stem_bn']['mean']
  assert not np.allclose(old_mean, new_mean)
  # momentum 0.9: the running mean moves 10% of the way to the batch mean.
  old_var = variables['batch_stats']['stem_bn']['var']
  new_var = new_state['batch_stats']['stem_bn']['var']
  assert np.all(new_var > 0.9 * old_var - 1e-6)
  chex.assert_trees_all_equal_structs(variables['batch_stats'],
                                      new_state['batch_stats'])


def test_train_mode_depends_on_batch_eval_mode_does_not(tiny, tiny_apply):
  _, variables = tiny
  train, evaluate = tiny_apply
  x = _images(4, 32, seed=2)
  others = _images(4, 32, seed=3)
  y = jnp.concatenate([x[:1], others[1:]])  # same first example
  train_x, _ = train(variables, x)
  train_y, _ = train(variables, y)
  assert not np.allclose(train_x[0], train_y[0], atol=1e-4)
  eval_x, eval_y = evaluate(variables, x), evaluate(variables, y)
  np.testing.assert_allclose(eval_x[0], eval_y[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(eval_x[1], eval_y[1], atol=1e-4)


def test_train_mode_statistics_span_the_sharded_global_batch(tiny, tiny_apply):
  # Training jits over a batch sharded across devices with no BN axis_name:
  # the statistics must still be those of the whole batch, not per device.
  _, variables = tiny
  train, _ = tiny_apply
  n = len(jax.devices())
  assert n == 8, 'tests/conftest.py sets 8 CPU devices'
  mesh = jax.make_mesh((n,), ('data',))
  x = _images(n, 32, seed=6)
  sharded_x = jax.device_put(x, NamedSharding(mesh, P('data')))
  replicated = jax.device_put(variables, NamedSharding(mesh, P()))
  out, state = train(replicated, sharded_x)
  ref_out, ref_state = train(variables, x)
  # One example per device: per-device statistics would give other outputs.
  chex.assert_trees_all_close(out, ref_out, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state, ref_state, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------ zero_init_residual ---


def _blocks_are_identity_plus_shortcut(apply, params, batch_stats, x):
  """True iff every block's output equals relu(its shortcut)."""
  inter = apply({'params': params, 'batch_stats': batch_stats}, x)
  # Block inputs: the post-ReLU stem output (CIFAR stem: no max-pool), then
  # each block's output in turn.
  prev = nn.relu(inter['stem_bn']['__call__'][0])
  ok = True
  blocks = sorted((k for k in inter if k.startswith('stage')),
                  key=lambda k: (int(k[5]), int(k.split('block')[1])))
  assert len(blocks) == 4
  for name in blocks:
    block = inter[name]
    if 'shortcut_bn' in block:
      shortcut = block['shortcut_bn']['__call__'][0]
    else:
      shortcut = prev
    out = block['__call__'][0]
    ok &= bool(np.allclose(out, nn.relu(shortcut), atol=1e-6))
    prev = out
  return ok


@pytest.mark.parametrize('block,last_bn', [(resnet.BasicBlock, 'bn2'),
                                          (resnet.Bottleneck, 'bn3')])
def test_zero_init_residual(block, last_bn):
  model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), block=block, width=0.125,
                        zero_init_residual=True)
  x = _images(2, 16, seed=4)
  variables = _jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
  params = variables['params']

  @_jit
  def apply(variables, x):
    _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                           mutable=['batch_stats', 'intermediates'])
    return state['intermediates']

  for name in ('stage1_block0', 'stage2_block0', 'stage4_block0'):
    np.testing.assert_array_equal(params[name][last_bn]['scale'], 0.0)
    np.testing.assert_array_equal(params[name]['bn1']['scale'], 1.0)
  assert _blocks_are_identity_plus_shortcut(
      apply, params, variables['batch_stats'], x)
  # With the scales at their usual 1 the residual branches contribute, so the
  # check above is not vacuous.
  ones = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.ones_like(p) if last_bn in str(path) else p, params)
  assert not _blocks_are_identity_plus_shortcut(
      apply, ones, variables['batch_stats'], x)


# ------------------------------------------------------------------- MLP ---


def test_mlp_shapes_and_layers():
  mlp = models.MLP(hidden_dims=(32, 16), out_dim=8)
  x = _images(4, 1).reshape(4, 3)
  out, variables = _jit(lambda x: mlp.init_with_output(
      jax.random.key(0), x, train=False))(x)
  chex.assert_shape(out, (4, 8))
  params = variables['params']
  assert set(params) == {'dense0', 'bn0', 'dense1', 'bn1', 'dense2'}
  chex.assert_shape(params['dense0']['kernel'], (3, 32))
  chex.assert_shape(params['dense1']['kernel'], (32, 16))
  chex.assert_shape(params['dense2']['kernel'], (16, 8))
  assert 'bias' in params['dense2']  # no BN after the output layer
  assert 'bias' not in params['dense0']  # BN's mean subtraction cancels it


def test_mlp_byol_head_shapes():
  # BYOL projector/predictor: 4096 hidden with BN+ReLU, 256 out.
  mlp = models.MLP(hidden_dims=(4096,), out_dim=256)
  out, variables = jax.eval_shape(lambda: mlp.init_with_output(
      jax.random.key(0), jnp.zeros((2, 512)), train=True))
  chex.assert_shape(out, (2, 256))
  chex.assert_shape(variables['batch_stats']['bn0']['mean'], (4096,))


def test_mlp_last_bn_normalises_output():
  mlp = models.MLP(hidden_dims=(16,), out_dim=8, last_bn=True)
  x = jnp.asarray(3.0 + 2.0 * np.random.default_rng(5).standard_normal((64, 10)),
                  jnp.float32)

  @_jit
  def init_and_train(x):
    variables = mlp.init(jax.random.key(0), x, train=False)
    out, state = mlp.apply(variables, x, train=True, mutable=['batch_stats'])
    return variables, out, state

  variables, out, state = init_and_train(x)
  assert 'bn1' not in variables['params']  # no scale or bias
  chex.assert_shape(variables['batch_stats']['bn1']['mean'], (8,))
  assert 'bias' not in variables['params']['dense1']
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std(0), 1.0, atol=1e-2)
  assert set(state['batch_stats']) == {'bn0', 'bn1'}


def test_mlp_without_bn_and_bfloat16():
  mlp = models.MLP(hidden_dims=(16,), out_dim=4, use_bn=False,
                   dtype=jnp.bfloat16)
  out, variables = _jit(lambda x: mlp.init_with_output(
      jax.random.key(0), x, train=True))(jnp.ones((2, 6)))
  assert 'batch_stats' not in variables
  assert out.dtype == jnp.float32
  chex.assert_shape(out, (2, 4))
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32


# --------------------------------------------------------- create_encoder ---


def test_create_encoder_from_config():
  cfg = _model_config(name='resnet50', width=2.0, stem='imagenet')
  encoder = models.create_encoder(cfg, dtype='bfloat16')
  assert isinstance(encoder, models.ResNet)
  assert encoder.block is models.Bottleneck
  assert encoder.stem == 'imagenet'
  assert encoder.dtype == jnp.bfloat16
  assert not encoder.zero_init_residual
  assert models.feature_dim(cfg) == encoder.feature_dim == 4096
  assert models.feature_dim(_model_config()) == 512  # base config: resnet18
  cfg.zero_init_residual = True
  assert models.create_encoder(cfg).zero_init_residual
  assert models.create_encoder(cfg).dtype == jnp.float32


def test_create_encoder_output_matches_feature_dim():
  cfg = _model_config(name='resnet10', width=0.5)
  encoder = models.create_encoder(cfg)
  (out, _) = _abstract_init(encoder, 28)
  chex.assert_shape(out, (2, models.feature_dim(cfg)))


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(errors.ConfigError) as info:
    models.create_encoder(_model_config(name='resnet9000'))
  for name in models.BACKBONES:
    assert name in str(info.value)
  assert 'resnet9000' in str(info.value)
  with pytest.raises(errors.ConfigError):
    models.feature_dim(_model_config(name='vit'))


def test_unknown_stem_lists_valid_stems():
  with pytest.raises(errors.ConfigError) as info:
    models.create_encoder(_model_config(stem='tiny'))
  assert "'tiny'" in str(info.value)
  assert 'cifar' in str(info.value) and 'imagenet' in str(info.value)
  # The module checks too, for encoders built without create_encoder.
  with pytest.raises(errors.ConfigError, match='cifar'):
    _abstract_init(models.resnet10(stem='tiny'), 32)


def test_bad_width_and_dtype():
  with pytest.raises(errors.ConfigError, match='width'):
    models.create_encoder(_model_config(width=0.0))
  with pytest.raises(errors.ConfigError, match='dtype'):
    models.create_encoder(_model_config(), dtype='float99')


# ------------------------------------------------------- backbone contract ---


def test_backbone_returns_pooled_features_and_named_feature_maps():
  backbone = models.get_backbone(_model_config(name='resnet18', width=0.25, stem='cifar'))
  assert backbone.feature_map_names == ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
  out, variables = jax.eval_shape(lambda: backbone.module().init_with_output(
      jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))
  assert isinstance(out, models.BackboneOutput)
  chex.assert_shape(out.pooled, (2, backbone.feature_dim))
  # (jax orders a dict's keys; the spec gives the input-to-output order)
  assert set(out.feature_maps) == set(backbone.feature_map_names)
  sides = {'stem': 32, 'stage1': 32, 'stage2': 16, 'stage3': 8, 'stage4': 4}
  channels = {'stem': 16, 'stage1': 16, 'stage2': 32, 'stage3': 64, 'stage4': 128}
  for name, fmap in out.feature_maps.items():
    chex.assert_shape(fmap, (2, sides[name], sides[name], channels[name]))
  # The pooled feature is the mean of the last map.
  x = _images(2, 32)
  module = backbone.module()
  v = _jit(lambda x: module.init(jax.random.key(0), x, train=False))(x)
  real = _jit(lambda v, x: module.apply(v, x, train=False))(v, x)
  np.testing.assert_allclose(real.pooled, real.feature_maps['stage4'].mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  # Every parameter belongs to one declared layer group, in order.
  groups = {backbone.layer_group([str(k.key) for k in path])
            for path, _ in jax.tree_util.tree_leaves_with_path(variables['params'])}
  assert groups == set(backbone.layer_groups) == set(models.LAYER_GROUPS)


def test_backbone_identity_fields_and_problems():
  cfg = _model_config(name='resnet10', width=0.5, stem='imagenet')
  backbone = models.get_backbone(cfg)
  assert backbone.identity() == {'name': 'resnet10', 'width': 0.5, 'stem': 'imagenet',
                                 'zero_init_residual': False}
  problems = models.backbone_problems(_model_config(stem='imagenet', width=-1), 16)
  assert any('width=-1' in p for p in problems)
  assert any('image_size=16 is smaller than the total stride 32' in p for p in problems)
  assert models.backbone_problems(_model_config(name='resnet1O'), 32) == [
      "Unknown model 'resnet1O' (config.model.name); did you mean 'resnet18' or 'resnet10'? "
      "Valid: resnet10, resnet18, resnet34, resnet50, resnet101, resnet152."]
