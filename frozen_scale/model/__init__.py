"""frozen_scale.model"""
