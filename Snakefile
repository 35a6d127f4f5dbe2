# mtml: one stage graph, derived from params.yaml (see workflow/rules/common.smk).
#   snakemake --cores 8 all                              the embedded default (params.yaml)
#   snakemake --cores 8 all --configfile configs/X.yaml  a preset instead of params.yaml


# Every preset in configs/ is a whole params file, so files named with --configfile replace
# params.yaml (merged in the order given) rather than adding their experiments and methods
# to the default ones.
if not workflow.overwrite_configfiles:

    configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/meta.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        ALL_OUTPUTS,
