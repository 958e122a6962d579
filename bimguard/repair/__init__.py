"""The repair of existing collisions: a snapshot of the cluster (`world`) and the order of steps
for each disk to regenerate (`steps`), both pure; jobs/repair.py and jobs/repair_runner.py carry
them out."""
