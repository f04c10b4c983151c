"""Rewards for post-training (GRPO, DPO): components named in a stage config with a weight and a shaping, composed
into one reward per rollout.

    stage.grpo.rewards:                       # or stage.dpo.rewards
      wer: {weight: 0.45, backend: pocketsphinx, shaping: {worst: 1.0, mean: 0.6, best: 0.0}}
      sim: {weight: 0.45}                     # resemblyzer against the prompt's audio (data.return_wav: true)
      quality: {weight: 0.1}
      length: {}                              # a gate: 0 for a degenerate length

* :mod:`~e2e_tts.rewards.spec`: a reward's entry (:class:`~e2e_tts.rewards.spec.RewardSpec`) and the piecewise-linear
  shaping (:class:`~e2e_tts.rewards.spec.Shaping`);
* :mod:`~e2e_tts.rewards.components`: the kinds, their registry and the composition
  (:class:`~e2e_tts.rewards.components.RewardSet`);
* :mod:`~e2e_tts.rewards.rollouts`: what is judged; :mod:`~e2e_tts.rewards.judges`: who judges (the reward model,
  audio decoded as synthesis decodes it, recognisers and speaker-similarity judges of e2e_tts.scoring).
"""
