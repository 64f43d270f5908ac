import sys; sys.path.insert(0, ".")
exec(open("results/kernels/round30_h100/host2/breakdown.py").read().split("plan = sts[0].launch_plan")[0])
cfg = next(iter(decode._PUBLIC_CONFIGS.values()))
for name, l in (("decoder", cfg.launcher), *((f"merge{k}", m) for k, m in cfg.merges.items())):
    print(name, "kernels", len(l.kernels), "direct", len(l.direct))
    for k, kern in l.kernels.items():
        run = kern.run
        print(" ", {n: getattr(run, n, "MISSING") for n in ("global_scratch_size", "profile_scratch_size", "launch_cooperative_grid", "launch_pdl")}, "has launch", hasattr(run, "launch"))
print("hooked", launch.hooked(), launch.knobs.runtime.launch_enter_hook)
