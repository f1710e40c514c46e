"""ptft: fine-tune every pre-training checkpoint on every task, evaluate, aggregate.

snakemake            # the default (toy) study
snakemake --configfile workflow/studies/X.yaml
"""

from snakemake.utils import min_version

from ptft.config import validate_study
from ptft.data.declared import export as export_datasets
from ptft.data.declared import study_block as study_datasets

min_version("9.0")


# A study file given with --configfile replaces the default study instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# One line naming the key on a bad study (Snakemake's validate prints the whole schema after it).
validate_study(config)
# The study's own datasets, declared for the plan here and, through the environment, for every job's command.
export_datasets(study_datasets(config))


include: "workflow/rules/common.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"


if PLAN.derive:

    include: "workflow/rules/derive.smk"


if PLAN.probe_sets:

    include: "workflow/rules/probes.smk"


if PLAN.mechanistic:

    include: "workflow/rules/mechanistic.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
