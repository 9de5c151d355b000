"""Imported first by each package of the lab (lab, experiment, report, study): without the lab
extra's packages, importing one raises an ImportError that names the extra, rather than a
ModuleNotFoundError for one of its packages from deep inside."""

from normlab_extras import require_lab_extra

require_lab_extra("normlab's lab (compare, report, study)")
