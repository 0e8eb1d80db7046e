"""ImageNet-weight loading: converted torch weights give torch's numbers in the Flax ResNet.

A ResNet18 written here in plain torch with torchvision's tensor names (torchvision itself is not
needed) gets random weights and random BatchNorm running statistics, is saved as safetensors,
converted, and must reproduce torch's eval-mode logits and pooled features on real images.
ResNet50 is checked for names and shapes only, from numpy tensors named the torchvision way.
"""

import os
import pathlib

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

torch = pytest.importorskip('torch', reason='torch is needed to build the reference ResNet18 '
                            '(pip install torch==2.13.0, CPU build)')
from safetensors.numpy import save_file  # noqa: E402

from diffmic_jax import convert, pretrained  # noqa: E402
from diffmic_jax.models import resnet  # noqa: E402

DATA_ROOT = pathlib.Path(os.environ.get(
    'DIFFMIC_DATA_ROOT', pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'))
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TOL = 1e-4  # assert_allclose(rtol=TOL, atol=TOL): |flax - torch| <= 1e-4 + 1e-4 * |torch|.


class _TorchBasicBlock(torch.nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(cout)
    self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet18(torch.nn.Module):
  """torchvision's ResNet18 layout, written out so the test needs only torch."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(64)
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
      stride = 1 if i == 0 else 2
      setattr(self, f'layer{i + 1}', torch.nn.Sequential(_TorchBasicBlock(cin, cout, stride),
                                                         _TorchBasicBlock(cout, cout, 1)))
      cin = cout
    self.fc = torch.nn.Linear(512, num_classes)

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    pooled = x.mean(dim=(2, 3))
    return self.fc(pooled), pooled


class _WithEncoder(nn.Module):
  """Stands in for the epsilon network: a trunk named `encoder` plus a new head."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name='head')(resnet.ResNet18(output='pooled', name='encoder')(x))


def _randomise(model):
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        # Non-trivial affine and running stats, so a swapped scale/var would show.
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        m.num_batches_tracked.fill_(7)
    # A wider head than torch's default, so logits are O(1) and the tolerance means something.
    model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=gen) * 0.2)
  return model.eval()


def _images(n=4):
  for sub in ('ham10000_224', 'aptos2019_224'):
    folder = DATA_ROOT / sub / 'images'
    if folder.is_dir():
      break
  else:
    pytest.skip(f'no real images: neither ham10000_224/images nor aptos2019_224/images under '
                f'{DATA_ROOT} (set DIFFMIC_DATA_ROOT)')
  from PIL import Image  # pylint: disable=import-outside-toplevel
  files = sorted(folder.glob('*.jpg'))[:n]
  x = np.stack([np.asarray(Image.open(f).convert('RGB').resize((224, 224)), np.float32) / 255
                for f in files])
  return (x - IMAGENET_MEAN) / IMAGENET_STD  # NHWC


@pytest.fixture(scope='module')
def resnet18_files(tmp_path_factory):
  torch.manual_seed(0)
  model = _randomise(_TorchResNet18())
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  folder = tmp_path_factory.mktemp('weights')
  save_file(state, str(folder / 'resnet18.safetensors'))
  # A DDP training checkpoint: wrapped and 'module.'-prefixed.
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}},
             folder / 'resnet18_ddp.pth')
  return model, folder


def test_resnet18_parity_with_torch(resnet18_files):
  model, folder = resnet18_files
  x = _images()
  with torch.no_grad():
    logits_t, pooled_t = (t.numpy() for t in model(torch.from_numpy(x).permute(0, 3, 1, 2)))

  variables = pretrained.load_variables(str(folder / 'resnet18.safetensors'))
  logits = resnet.ResNet18(output='logits').apply(variables, x, train=False)
  np.testing.assert_allclose(np.asarray(logits), logits_t, rtol=TOL, atol=TOL)

  # Pooled features through init_from_pretrained, as the epsilon network's encoder gets them.
  wrapper = _WithEncoder()
  fresh = wrapper.init(jax.random.key(1), x[:1])
  loaded, report = pretrained.init_from_pretrained(fresh, variables, ('encoder',), 'r18')
  pooled = wrapper.apply(loaded, x, capture_intermediates=lambda m, _: m.name == 'encoder',
                         mutable=['intermediates'])[1]['intermediates']['encoder']['__call__'][0]
  np.testing.assert_allclose(np.asarray(pooled), pooled_t, rtol=TOL, atol=TOL)
  for name, a, b in (('logits', logits, logits_t), ('pooled', pooled, pooled_t)):
    err = np.abs(np.asarray(a) - b)
    print(f'{name}: max abs err {err.max():.2e}, max |torch| {np.abs(b).max():.2f}, '
          f'max abs err / max |torch| {err.max() / np.abs(b).max():.2e}')

  assert sorted(report.new) == ['params/head/bias', 'params/head/kernel']
  assert len(report.loaded) == 20 + 20 * 2 + 20 * 2  # convs, BN (scale, bias), BN (mean, var)
  assert report.loaded['batch_stats/encoder/layer2_0/downsample_bn/var'] == 'r18'
  assert 'newly initialised: 2 tensor(s) of params/head' in report.summary()


def test_pth_wrapped_ddp_and_cli_agree(resnet18_files, tmp_path):
  _, folder = resnet18_files
  reference = pretrained.load_variables(str(folder / 'resnet18.safetensors'))
  out = tmp_path / 'r18.msgpack'
  assert convert.cli(['--input', str(folder / 'resnet18_ddp.pth'), '--arch', 'resnet18',
                      '--output', str(out)]) == 0
  for variables in (pretrained.load_variables(str(out)),
                    pretrained.load_variables(str(folder / 'resnet18_ddp.pth'))):
    flat, ref = (traverse_util.flatten_dict(v) for v in (variables, reference))
    assert flat.keys() == ref.keys()
    for k in ref:
      np.testing.assert_array_equal(flat[k], ref[k], err_msg='/'.join(k))
  # --arch is checked against the Flax model: a ResNet18 file is not a ResNet50.
  assert convert.cli(['--input', str(folder / 'resnet18.safetensors'), '--arch', 'resnet50',
                      '--output', str(tmp_path / 'bad.msgpack')]) == 1


def _torchvision_resnet50_shapes():
  """Names and shapes of torchvision's resnet50 state dict, from its definition."""
  shapes = {'conv1.weight': (64, 3, 7, 7), 'fc.weight': (1000, 2048), 'fc.bias': (1000,)}

  def bn(name, c):
    shapes.update({f'{name}.{leaf}': (c,) for leaf in ('weight', 'bias', 'running_mean',
                                                       'running_var')})
    shapes[f'{name}.num_batches_tracked'] = ()

  bn('bn1', 64)
  cin = 64
  for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
    for j in range(blocks):
      p = f'layer{i + 1}.{j}'
      for k, (o, c, s) in enumerate(((planes, cin, 1), (planes, planes, 3),
                                     (planes * 4, planes, 1)), start=1):
        shapes[f'{p}.conv{k}.weight'] = (o, c, s, s)
        bn(f'{p}.bn{k}', o)
      if j == 0:
        shapes[f'{p}.downsample.0.weight'] = (planes * 4, cin, 1, 1)
        bn(f'{p}.downsample.1', planes * 4)
      cin = planes * 4
  return shapes


def test_resnet50_names_and_shapes_fit_exactly():
  shapes = _torchvision_resnet50_shapes()
  rng = np.random.default_rng(0)
  state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  variables = convert.convert_state_dict(state)
  got = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
  assert got == convert.expected_shapes('resnet50')
  n = sum(v.size for k, v in traverse_util.flatten_dict(variables).items() if k[0] == 'params')
  assert n == 25_557_032
  np.testing.assert_array_equal(variables['params']['layer3_0']['downsample_conv']['kernel'],
                                state['layer3.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state['fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['layer4_2']['bn3']['var'],
                                state['layer4.2.bn3.running_var'])
  trunk = convert.convert_state_dict(state, include_fc=False)
  assert 'fc' not in trunk['params']


def test_refuses_missing_and_misshaped_tensors():
  trunk = jax.eval_shape(lambda: resnet.ResNet18(output='pooled').init(
      jax.random.key(0), np.zeros((1, 32, 32, 3))))
  fresh = {'params': {'global_net': trunk['params']},
           'batch_stats': {'global_net': trunk['batch_stats']}}
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  source = jax.tree.map(np.copy, {c: v['global_net'] for c, v in fresh.items()})

  del source['batch_stats']['layer4_1']['bn2']['var']
  source['params']['layer3_0']['conv2']['kernel'] = np.zeros((3, 3, 256, 128), np.float32)
  source['params']['extra'] = {'kernel': np.zeros((2,), np.float32)}
  with pytest.raises(ValueError) as e:
    pretrained.init_from_pretrained(fresh, source, ('global_net',))
  message = str(e.value)
  assert 'global_net' in message
  assert 'batch_stats/layer4_1/bn2/var (layer4.1.bn2.running_var) expected (512,)' in message
  assert ('params/layer3_0/conv2/kernel (layer3.0.conv2.weight) expected (3, 3, 256, 256) '
          'got (3, 3, 256, 128)') in message
  assert 'params/extra/kernel (extra.weight) got (2,)' in message

  with pytest.raises(ValueError, match='no ResNet at'):
    pretrained.init_from_pretrained(fresh, source, ('local_net',))
  with pytest.raises(ValueError, match='layer1.0.attn.weight'):
    convert.convert_state_dict({'layer1.0.attn.weight': np.zeros(3)})


def test_reports_merge_over_two_trunks():
  trunk = jax.eval_shape(lambda: resnet.ResNetTiny(output='map').init(
      jax.random.key(0), np.zeros((1, 32, 32, 3))))
  trunk = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), trunk)
  fresh = {c: {'global_net': trunk[c], 'local_net': trunk[c]} for c in ('params', 'batch_stats')}
  fresh['params']['head'] = {'kernel': np.zeros((2, 2), np.float32)}
  source = jax.tree.map(np.ones_like, trunk)
  v1, r1 = pretrained.init_from_pretrained(fresh, source, ('global_net',))
  v2, r2 = pretrained.init_from_pretrained(v1, source, ('local_net',))
  report = r1.merge(r2)
  assert report.new == ('params/head/kernel',)
  assert float(v2['params']['local_net']['conv1']['kernel'].sum()) > 0
  assert float(v2['params']['global_net']['conv1']['kernel'].sum()) > 0
  assert float(fresh['params']['global_net']['conv1']['kernel'].sum()) == 0  # input untouched
