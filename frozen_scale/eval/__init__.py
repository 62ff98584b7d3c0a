"""frozen_scale.eval"""
