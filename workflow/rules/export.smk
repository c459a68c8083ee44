# Exports (DESIGN.md "Exports"): per case, the registration between the raw images'
# frames and in the tools' formats (clemalign.export): transform.json, transform.tfm
# (ITK), ecclem.xml (ec-CLEM), bigwarp_landmarks.csv (BigWarp), em_on_lm.tif,
# lm_on_em.tif, residuals.csv. A case without a usable answer gets transform.json only,
# with status failed: <reason>. The output is the case's folder, so that a rerun never
# leaves exchange files of an earlier, usable answer beside a failed one.


rule export_case:
    input:
        unpack(export_inputs),
    output:
        folder=directory(f"{R}/export/{{case}}"),
        figure=report(
            f"{R}/figures/residuals/{{case}}.png",
            caption="../report/residuals_figure.rst",
            category="Exports",
            subcategory="{case}",
        ),
    wildcard_constraints:
        case=constraint(sorted(CASES)),
    params:
        case=case_record,
        names=export_result_names,
        export=EXPORT,
        confidence=config["registration"]["confidence"],
    log:
        f"{R}/logs/export/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/export/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/export_case.py"
