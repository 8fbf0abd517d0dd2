"""The science: pure functions a reader checks against the papers. Imports only data/ and models/.

  losses         cross-entropy variants, DIST relation distillation, feature distillation, BN KL
  rgal_losses    RGAL's triplet losses (synthesis and student)
  learners       one Learner per method (rfd, rdfcil, abd, deepinversion, finetune, joint): its
                 losses, loss weights, data selection and phases
  inversion      model inversion of the previous model: the generator's objective and step
  tasks          class orders (seed<N>, explicit) and task splits (TaskSpec)
  metrics        class-incremental metrics: accuracy matrix, average incremental, forgetting
"""
