"""The benchmark of stam-optimizer (`stam-bench`, in `cli`), in folders by job:

* `programme`: the optimizer registry, suites, sizes, runner, scheduler, records;
* `tasks`: the tasks, their data and models;
* `measure`: speed, memory, HLO traffic, kernel profiles, the β₁ signal streams;
* `report`: statistics, the report and its figures, from the records alone;
* `legacy`: the 0.1.0 commands (run through their 0.1.0 file paths here).
"""
