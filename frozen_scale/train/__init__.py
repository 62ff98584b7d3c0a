"""frozen_scale.train"""
