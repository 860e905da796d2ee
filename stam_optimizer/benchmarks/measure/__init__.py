"""Measurements of the optimizers themselves: update and train-step speed, state and
compiled-step memory, HLO traffic and kernel profiles, and the β₁ signal on
controlled gradient streams."""
