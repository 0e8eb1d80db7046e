"""The official DiffMIC code (github scott-yjyang/DiffMIC), imported from a checkout, and the narrow
trunks that let its modules run at this port's small sizes.

Shared by bench/official_speed.py, bench/official_train.py and tests/golden/make_golden.py. The
checkout is never copied into the project: its modules are imported from where it lies, with
import-time stubs only for packages that the paths run here never call.
"""

import importlib
import importlib.util
import pathlib
import sys
import types


def stub(name: str, **attrs) -> types.ModuleType:
  """An empty module registered as `name` (attributes as given)."""
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  mod.__file__ = f'<stub for {name}: bench/official_code.py>'
  sys.modules[name] = mod
  return mod


def _bare_torchvision(torchvision_dir: pathlib.Path) -> None:
  """torchvision's pure-Python parts without its package __init__ and compiled operators (for a
  torchvision built for another torch): bare packages pointing at its folders, and the names
  torchvision.transforms/__init__ would export."""
  for name, sub in (('torchvision', ''), ('torchvision.models', 'models'),
                    ('torchvision.transforms', 'transforms')):
    module = types.ModuleType(name)
    module.__path__ = [str(torchvision_dir / sub)]
    sys.modules[name] = module
  sys.modules['torchvision'].models = sys.modules['torchvision.models']
  sys.modules['torchvision'].transforms = sys.modules['torchvision.transforms']
  stub('torchvision.transforms._presets', ImageClassification=object)
  transforms = importlib.import_module('torchvision.transforms.transforms')
  sys.modules['torchvision.transforms'].__dict__.update(
      {k: v for k, v in vars(transforms).items() if not k.startswith('_')})


def import_official(official_dir, torchvision_dir=None, *, data_pipeline: bool = False):
  """Imports the official modules from `official_dir`.

  Args:
    official_dir: checkout of scott-yjyang/DiffMIC.
    torchvision_dir: a torchvision package folder loaded without its compiled operators; None:
      `import torchvision` as installed.
    data_pipeline: import the official dataloader/loading.py (its datasets and transforms), with
      stubs for cv2, skimage and imageio when missing (imported there, unused by APTOSDataset);
      False: an empty module in its place, for callers that feed tensors.

  Returns:
    (namespace of modules: trainer, model, dutils, ema, utils, dcg, modules, resnet, loading or
    None; list of stubs applied).
  """
  official_dir = pathlib.Path(official_dir).resolve()
  if not (official_dir / 'diffusion_trainer.py').is_file():
    raise SystemExit(f'error: no official DiffMIC code in {official_dir} (diffusion_trainer.py)')
  stubs = []
  if torchvision_dir:
    _bare_torchvision(pathlib.Path(torchvision_dir))
    stubs.append(f'torchvision: pure-Python packages from {torchvision_dir}, no compiled operators')
  # model.py imports densenet121 and timm's create_model for encoders not used here.
  stub('torchvision.models.densenet', densenet121=None)
  stub('timm')
  stub('timm.models', create_model=None)
  stubs.append('torchvision.models.densenet, timm.models (unused encoders)')
  if data_pipeline:
    for name in ('cv2', 'skimage', 'imageio'):
      if importlib.util.find_spec(name) is None:
        stub(name)
        stubs.append(f'{name} (empty module; unused by APTOSDataset)')
        if name == 'skimage':  # loading.py: `from skimage import filters`.
          sys.modules['skimage'].filters = stub('skimage.filters')
  else:
    stub('dataloader.loading')
    stubs.append('dataloader.loading (empty module; images are fed as tensors)')
  # diffusion_trainer.py imports these for plots and statistics in test() only.
  if importlib.util.find_spec('matplotlib') is None:
    stub('matplotlib')
    stub('matplotlib.pyplot', style=types.SimpleNamespace(use=lambda *a, **k: None))
    stubs.append('matplotlib.pyplot (style.use no-op)')
  if importlib.util.find_spec('statsmodels') is None:
    stub('statsmodels')
    stub('statsmodels.api')
    stubs.append('statsmodels.api (empty module)')
  sys.path.insert(0, str(official_dir))
  names = dict(trainer='diffusion_trainer', model='model', dutils='diffusion_utils', ema='ema',
               utils='utils', dcg='pretraining.dcg', modules='pretraining.modules',
               resnet='torchvision.models.resnet')
  ns = types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})
  ns.loading = sys.modules['dataloader.loading'] if data_pipeline else None
  return ns, stubs


def narrow_resnet(resnet, width: int, blocks=(2, 2, 2, 2), small_stem: bool = False):
  """torchvision's ResNet with BasicBlocks at base width `width` (torchvision: 64), with its own
  initial values; `small_stem`: a 3x3 stride-1 stem without max-pool, as the port's for 28-64 px."""
  from torch import nn  # pylint: disable=import-outside-toplevel

  class Narrow(resnet.ResNet):
    def __init__(self):  # pylint: disable=super-init-not-called
      nn.Module.__init__(self)
      self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
      self.inplanes = width
      if small_stem:
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
      else:
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
      self.layer1 = self._make_layer(resnet.BasicBlock, width, blocks[0])
      self.layer2 = self._make_layer(resnet.BasicBlock, 2 * width, blocks[1], stride=2)
      self.layer3 = self._make_layer(resnet.BasicBlock, 4 * width, blocks[2], stride=2)
      self.layer4 = self._make_layer(resnet.BasicBlock, 8 * width, blocks[3], stride=2)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(8 * width, 1000)
      for m in self.modules():  # As torchvision's ResNet.__init__.
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.BatchNorm2d):
          nn.init.constant_(m.weight, 1)
          nn.init.constant_(m.bias, 0)

  return Narrow()


def narrow_dcg(dcg, channels: int, num_classes: int, grid: int, crop: int, num_rois: int = 6):
  """Re-makes an official DCG built on narrow trunks: the layers hard-coded 2048 wide at
  `channels`, the 7x7 saliency grid at `grid`, the 32 px crops at `crop` (one grid cell, as
  32 px is at 224 px), `num_rois` crops, and the crop buffers and masks on the CPU."""
  from torch import nn  # pylint: disable=import-outside-toplevel
  params = dcg.experiment_parameters
  params['device_type'], params['cam_size'], params['K'] = 'cpu', (grid, grid), num_rois
  params['crop_shape'] = (crop, crop)
  dcg.cam_size = (grid, grid)
  dcg.retrieve_roi_crops.gpu_number = None
  dcg.retrieve_roi_crops.crop_shape = (crop, crop)
  dcg.retrieve_roi_crops.num_crops_per_class = num_rois
  dcg.left_postprocess_net.gn_conv_last = nn.Conv2d(channels, num_classes, 1, bias=False)
  dcg.mil_attn_U = nn.Linear(channels, 128, bias=False)
  dcg.mil_attn_V = nn.Linear(channels, 128, bias=False)
  dcg.classifier_linear = nn.Linear(channels, num_classes, bias=False)
  return dcg
