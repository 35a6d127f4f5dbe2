# mtml: one stage graph, derived from params.yaml (see workflow/rules/common.smk).
#   snakemake --cores 8 all                          the embedded default
#   snakemake --cores 8 --configfile configs/X.yaml  a preset (same schema)


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/meta.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        ALL_OUTPUTS,
