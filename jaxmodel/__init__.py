"""jaxmodel: vectorized, differentiable performance models of LLM inference hardware.

Design points are pytrees (:class:`Architecture`, :class:`Workload`, :class:`System`,
:class:`Efficiency`) whose magnitudes are JAX arrays, so every metric can be jit-compiled,
vmapped over millions of points and differentiated.
"""

from . import platform_energy as platform_energy
from . import presets as presets
from . import status as status
from . import sweep as sweep
from .architectures import Architecture as Architecture
from .architectures import active_parameters as active_parameters
from .architectures import parameter_breakdown as parameter_breakdown
from .architectures import total_parameters as total_parameters
from .efficiency import Efficiency as Efficiency
from .efficiency import ideal as ideal
from .hardware import Chip as Chip
from .hardware import Interconnect as Interconnect
from .hardware import NetworkLevel as NetworkLevel
from .hardware import OffloadMemory as OffloadMemory
from .hardware import System as System
from .hf_config import load_hf_config as load_hf_config
from .memory import offload_plan as offload_plan
from .inference import evaluate as evaluate
from .predict import breakdown as breakdown
from .predict import predict as predict
from .platform_energy import PlatformPower as PlatformPower
from .platform_energy import step_energy_j as step_energy_j
from .platform_energy import step_metrics as step_metrics
from .platform_energy import tokens_per_kwh as tokens_per_kwh
from .presets import list_hardware as list_hardware
from .presets import list_models as list_models
from .presets import load_calibration as load_calibration
from .presets import load_hardware as load_hardware
from .presets import load_model as load_model
from .presets import load_offload as load_offload
from .workload import Workload as Workload

__version__ = "0.1.0"
