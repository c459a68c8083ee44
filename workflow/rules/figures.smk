# One figure per case: raw EM, raw LM, and the preprocessed pair with landmarks.


rule figure_case:
    input:
        unpack(case_files),
        unpack(preprocessed_files),
    output:
        report(
            f"{R}/figures/cases/{{case}}.png",
            caption="../report/case_figure.rst",
            category="Cases",
            subcategory="{case}",
        ),
    params:
        case=case_record,
    log:
        f"{R}/logs/figure_case/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/figure_case/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/figure_case.py"
