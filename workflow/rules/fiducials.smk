# Fiducial track: bead detection, Algorithm 1, the Gaussian-fit baseline of the paper's
# reference [5], the robust mode; Table 1.


rule register_fiducials:
    input:
        unpack(mask_files),
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
    output:
        summary=f"{R}/fiducials/{{case}}/summary.json",
        pairs=f"{R}/fiducials/{{case}}/pairs.csv",
        algorithm1_transform=f"{R}/fiducials/{{case}}/algorithm1_transform.json",
        gaussian_baseline_transform=f"{R}/fiducials/{{case}}/gaussian_baseline_transform.json",
        robust_transform=f"{R}/fiducials/{{case}}/robust_transform.json",
        figure=report(
            f"{R}/figures/fiducials/{{case}}.png",
            caption="../report/fiducial_figure.rst",
            category="Fiducial registration",
            subcategory="{case}",
        ),
    wildcard_constraints:
        case=constraint(cases_of("fiducial")),
    params:
        settings=config["fiducials"],
    log:
        f"{R}/logs/register_fiducials/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/register_fiducials/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV
    script:
        "../../scripts/register_fiducials.py"


rule table1:
    input:
        summaries=lambda wc: [f"{R}/fiducials/{n}/summary.json" for n in usable_cases("fiducial")],
        frames=lambda wc: [f"{R}/preprocessed/{n}/frame.json" for n in usable_cases("fiducial")],
        checks=check_files("fiducial"),
    output:
        long=f"{R}/tables/table1_fiducials_long.csv",
        csv=f"{R}/tables/table1_fiducials.csv",
        md=report(
            f"{R}/tables/table1_fiducials.md",
            caption="../report/table1.rst",
            category="Tables",
        ),
        tex=f"{R}/tables/table1_fiducials.tex",
    log:
        f"{R}/logs/table1.log",
    benchmark:
        f"{R}/benchmarks/table1.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    script:
        "../../scripts/table1.py"
